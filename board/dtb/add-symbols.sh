#!/usr/bin/env bash
# Give every Pi Zero board device tree of the image a __symbols__ node, so the HAT overlays
# (board/overlays/*.dts: `&i2s`, `&i2c1`, `&pcm_gpio18`) can be merged into it.
#   add-symbols.sh TREE
# TREE is the unpacked target root with linux-source-6.1 installed (the tree stage).
# Debian's arm64 kernel ships its DTBs compiled without `-@` (no labels); the armel Pi kernel's
# have them and are left alone. A DTB without them is compiled again from the kernel's own
# source with `dtc -@`, and replaces Debian's only if, __symbols__ and phandle values aside, it
# is the same tree (same source version, nothing else changed); otherwise the build stops.
set -euo pipefail
TREE="$1"
KVER=$(ls "$TREE/usr/lib/modules" | grep -v '^$' | sort -V | tail -1)
BOARDS="bcm2835-rpi-zero bcm2835-rpi-zero-w bcm2837-rpi-zero-2-w"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

lacking=()
for b in $BOARDS; do
    for dtb in $(find "$TREE/usr/lib/linux-image-$KVER" "$TREE/boot/firmware" -maxdepth 2 -name "$b.dtb" 2>/dev/null); do
        fdtget "$dtb" /__symbols__ i2s >/dev/null 2>&1 || lacking+=("$dtb")
    done
done
[ ${#lacking[@]} -gt 0 ] || { echo "add-symbols: the board DTBs already carry __symbols__"; exit 0; }

SRC_TAR=$(ls "$TREE"/usr/src/linux-source-*.tar.xz | head -1)
top=$(basename "$SRC_TAR" .tar.xz)
tar -xJf "$SRC_TAR" -C "$WORK" --wildcards "$top/arch/arm/boot/dts/bcm*" \
    "$top/arch/arm64/boot/dts/broadcom/*" "$top/include/dt-bindings/*" "$top/scripts/dtc/include-prefixes/*"
S="$WORK/$top"

without_symbols() {  # the DTB as sorted source, without __symbols__ and phandle properties
    dtc -q -I dtb -O dts -s "$1" | python3 -c '
import re, sys
text = re.sub(r"\n\t__symbols__ \{.*?\n\t\};", "", sys.stdin.read(), flags=re.S)
print("\n".join(l for l in text.splitlines() if l.strip() and "phandle = " not in l))'
}

for dtb in "${lacking[@]}"; do
    b=$(basename "$dtb" .dtb)
    dts=$(ls "$S/arch/arm64/boot/dts/broadcom/$b.dts" "$S/arch/arm/boot/dts/$b.dts" 2>/dev/null | head -1)
    [ -n "$dts" ] || { echo "add-symbols: no source for $b in $top" >&2; exit 1; }
    cpp -nostdinc -I "$S/include" -I "$(dirname "$dts")" -I "$S/scripts/dtc/include-prefixes" \
        -undef -D__DTS__ -x assembler-with-cpp "$dts" | dtc -q -@ -I dts -O dtb -o "$WORK/$b.dtb" -
    if ! diff -q <(without_symbols "$dtb") <(without_symbols "$WORK/$b.dtb") >/dev/null; then
        echo "add-symbols: $b compiled from $top differs from ${dtb#"$TREE"} beyond its symbols" >&2
        diff <(without_symbols "$dtb") <(without_symbols "$WORK/$b.dtb") | head -20 >&2
        exit 1
    fi
    install -m 644 "$WORK/$b.dtb" "$dtb"
    echo "add-symbols: ${dtb#"$TREE"} now has $(fdtget -p "$dtb" /__symbols__ | wc -l) labels"
done
