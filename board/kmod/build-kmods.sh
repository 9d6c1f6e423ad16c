#!/usr/bin/env bash
# Build the missing DAC codec modules for the image's kernel (EMBEDDED.md §2.4), and
# rpi-tryboot (board/kmod/rpi-tryboot.c: the A/B update's tryboot flag).
#   build-kmods.sh TREE
# TREE is the unpacked target root with linux-headers-<ver> and linux-source-6.1 installed.
# The sources are taken from linux-source-6.1 on the host (fast); the compile runs inside the
# tree under qemu-user (about a minute on 2 cores). Modules land in
# /usr/lib/modules/<ver>/updates/resonate and depmod is run.
set -euo pipefail
TREE="$1"
HERE="$(cd "$(dirname "$0")" && pwd)"
KVER=$(ls "$TREE/usr/lib/modules" | grep -v '^$' | sort -V | tail -1)
KDIR="/usr/src/linux-headers-$KVER"
[ -d "$TREE$KDIR" ] || { echo "build-kmods: no $KDIR in the tree" >&2; exit 1; }
SRC_TAR=$(ls "$TREE"/usr/src/linux-source-*.tar.xz | head -1)
BUILD="$TREE/tmp/resonate-kmod"
rm -rf "$BUILD"; mkdir -p "$BUILD"
top=$(basename "$SRC_TAR" .tar.xz)
members=""
for f in sound/soc/codecs/pcm5102a.c sound/soc/codecs/pcm512x.c sound/soc/codecs/pcm512x.h \
         sound/soc/codecs/pcm512x-i2c.c sound/soc/codecs/max98357a.c \
         sound/soc/generic/simple-card.c sound/soc/generic/simple-card-utils.c; do
    members="$members $top/$f"
done
tar -xJf "$SRC_TAR" -C "$BUILD" --strip-components=4 $members 2>/dev/null || \
    tar -xJf "$SRC_TAR" -C "$BUILD" --strip-components=4 --wildcards $members
ls "$BUILD"
cp "$HERE/Kbuild" "$HERE/rpi-tryboot.c" "$BUILD/"
UTILS=""
if ! grep -q '^CONFIG_SND_SIMPLE_CARD_UTILS=[ym]' "$TREE/boot/config-$KVER"; then
    UTILS="RESONATE_SIMPLE_CARD_UTILS=1"
fi
echo "build-kmods: kernel $KVER, sources from $(basename "$SRC_TAR") ${UTILS:+(+ simple-card-utils)}"
chroot "$TREE" make -s -C "$KDIR" M=/tmp/resonate-kmod $UTILS modules
mkdir -p "$TREE/usr/lib/modules/$KVER/updates/resonate"
cp "$BUILD"/*.ko "$TREE/usr/lib/modules/$KVER/updates/resonate/"
chroot "$TREE" depmod -a "$KVER"
for ko in "$TREE/usr/lib/modules/$KVER/updates/resonate/"*.ko; do
    echo "  $(basename "$ko"): $(modinfo -F vermagic "$ko" 2>/dev/null || true)"
done
rm -rf "$BUILD"
