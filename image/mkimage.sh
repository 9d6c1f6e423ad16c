#!/usr/bin/env bash
# Stage 3 of image/build.sh: per-HAT device trees, then genimage (no loop devices, no mounts).
#   mkimage.sh ARCH WORK OUT
set -euo pipefail
ARCH="$1"; WORK="$2"; OUT="$3"
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
TREE="$WORK/tree"
FW="$TREE/boot/firmware"
IMG="resonate-$ARCH.img"
T0=$(date +%s)
log() { echo "[mkimage +$(( $(date +%s) - T0 ))s] $*"; }

for m in dev/pts dev sys proc; do umount -l "$TREE/$m" 2>/dev/null || true; done

# ---- device trees: every HAT overlay merged into every Pi Zero board DTB present -----------
log "merging HAT overlays into the board device trees"
DTS_TMP="$WORK/dts"; rm -rf "$DTS_TMP"; mkdir -p "$DTS_TMP"
boards=()
for b in bcm2835-rpi-zero bcm2835-rpi-zero-w bcm2837-rpi-zero-2-w; do
    [ -e "$FW/$b.dtb" ] && boards+=("$b")
done
[ ${#boards[@]} -gt 0 ] || { echo "no Pi Zero DTB in $FW" >&2; exit 1; }
for profile in "$REPO"/board/hats/*.toml; do
    hat=$(python3 -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['hat']['name'])" "$profile")
    src=$(python3 -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['overlay']['source'])" "$profile")
    dtc -q -@ -I dts -O dtb -o "$DTS_TMP/$hat.dtbo" "$REPO/$src"
    for b in "${boards[@]}"; do
        out="$FW/resonate-$hat-$b.dtb"
        fdtoverlay -i "$FW/$b.dtb" -o "$out" "$DTS_TMP/$hat.dtbo"
        [ "$(fdtget "$out" /sound simple-audio-card,name)" = ResonateDAC ] || { echo "merge failed: $out" >&2; exit 1; }
        echo "  $(basename "$out")"
    done
done
mkdir -p "$FW/overlays-src"
cp "$REPO"/board/overlays/*.dts "$FW/overlays-src/"

# ---- A/B boot layout on the FAT partition ----------------------------------------------------
# The firmware reads config.txt (or, once after `reboot "0 tryboot"`, tryboot.txt); its
# os_prefix= line picks slot-a/ or slot-b/: that slot's kernel, initrd, DTBs and cmdline.txt
# (root= and rauc.slot=). The same files travel inside the root tree as the slot's boot payload
# (/usr/lib/resonate-embedded/boot), so an update bundle brings its own kernel and DTBs.
log "A/B boot layout"
PAYLOAD="$TREE/usr/lib/resonate-embedded/boot"
rm -rf "$PAYLOAD"; mkdir -p "$PAYLOAD"
kernel=$(cd "$FW" && ls vmlinuz-* | sort -V | tail -1)
initrd=$(cd "$FW" && ls initrd.img-* | sort -V | tail -1)
cp "$FW/$kernel" "$PAYLOAD/vmlinuz"
cp "$FW/$initrd" "$PAYLOAD/initrd.img"
cp "$FW"/resonate-*.dtb "$PAYLOAD/"
for b in "${boards[@]}"; do cp "$FW/$b.dtb" "$PAYLOAD/"; done
# the slot's cmdline.txt is made from this one: @ROOT@/@SLOT@ filled per slot
sed -E -e 's#(^| )root=[^ ]*#\1root=@ROOT@#' -e 's#$# rauc.slot=@SLOT@#' "$FW/cmdline.txt" > "$PAYLOAD/cmdline.txt.in"
grep -q 'root=@ROOT@' "$PAYLOAD/cmdline.txt.in" || { echo "no root= in cmdline.txt" >&2; exit 1; }
rm -rf "$FW/slot-a" "$FW/slot-b"; mkdir -p "$FW/slot-a" "$FW/slot-b"
cp "$PAYLOAD"/vmlinuz "$PAYLOAD"/initrd.img "$PAYLOAD"/*.dtb "$FW/slot-a/"
sed -e 's#@ROOT@#/dev/mmcblk0p2#' -e 's#@SLOT@#A#' "$PAYLOAD/cmdline.txt.in" > "$FW/slot-a/cmdline.txt"
rm -f "$FW"/vmlinuz-* "$FW"/initrd.img-* "$FW"/*.dtb "$FW/cmdline.txt"
sed -i -e "s#^kernel=.*#kernel=vmlinuz#" -e "s#^initramfs .*#initramfs initrd.img followkernel#" "$FW/config.txt"
printf '%s\n' '# the A/B slot this file boots (the update system rewrites this line)' 'os_prefix=slot-a/' >> "$FW/config.txt"
cp "$FW/config.txt" "$FW/tryboot.txt"
[ "$(grep -c '^os_prefix=' "$FW/config.txt")" = 1 ] && grep -q '^kernel=vmlinuz$' "$FW/config.txt"

# ---- sizes --------------------------------------------------------------------------------
# Each root slot has room for a tree ~40 % bigger than today's; data holds one update bundle
# (the tree squashed: ~40 % of it, measured 327 MiB armel, 452 MiB arm64) and the settings.
used_mb=$(( $(du -xsm "$TREE" | cut -f1) - $(du -xsm "$TREE/boot/firmware" | cut -f1) - $(du -xsm "$TREE/data" | cut -f1) ))
SLOT_MB=$(( ( (used_mb * 7 / 5 + 160) + 63) / 64 * 64 ))
BOOT_MB=256
DATA_MB=$(( ( (used_mb * 2 / 5 + 64) + 63) / 64 * 64 ))
[ "$DATA_MB" -ge 448 ] || DATA_MB=448
log "root tree ${used_mb} MB -> two root slots of ${SLOT_MB} MB, boot ${BOOT_MB} MB, data ${DATA_MB} MB"

GI="$WORK/genimage"
rm -rf "$GI"; mkdir -p "$GI/out" "$GI/in"
sed -e "s/@IMG@/$IMG/" -e "s/@BOOT_MB@/$BOOT_MB/" -e "s/@SLOT_MB@/$SLOT_MB/" -e "s/@DATA_MB@/$DATA_MB/" \
    "$HERE/genimage.cfg.in" > "$GI/genimage.cfg"
log "genimage"
genimage --config "$GI/genimage.cfg" --rootpath "$TREE" --tmppath "$GI/tmp" \
    --inputpath "$GI/in" --outputpath "$GI/out" > "$GI/genimage.log" 2>&1 || { tail -30 "$GI/genimage.log"; exit 1; }
mv -f "$GI/out/$IMG" "$OUT/$IMG"
rm -rf "$GI/tmp" "$GI/out"
(cd "$OUT" && sha256sum "$IMG" > "$IMG.sha256")
sfdisk -d "$OUT/$IMG"
log "image $OUT/$IMG: $(du -h --apparent-size "$OUT/$IMG" | cut -f1)"
