#!/bin/sh
# RAUC bundle hook, run on the speaker during `rauc install`. After the new root is written to
# the inactive slot (mounted at $RAUC_SLOT_MOUNT_POINT), copy its boot payload (kernel, initrd,
# DTBs, command line) into that slot's directory on the FAT partition, so the firmware's
# os_prefix=slot-x/ boots the bundle's own kernel. Only the inactive slot's directory is
# touched: config.txt still names the running slot, so a failure here leaves it bootable.
set -eu
[ "$1" = slot-post-install ] || exit 0
[ "$RAUC_SLOT_CLASS" = rootfs ] || exit 0
FW=/boot/firmware
payload="$RAUC_SLOT_MOUNT_POINT/usr/lib/resonate-embedded/boot"
case "$RAUC_SLOT_BOOTNAME" in
    A) dir=slot-a; root=/dev/mmcblk0p2 ;;
    B) dir=slot-b; root=/dev/mmcblk0p3 ;;
    *) echo "hook: unknown slot bootname '$RAUC_SLOT_BOOTNAME'" >&2; exit 1 ;;
esac
for f in vmlinuz initrd.img cmdline.txt.in; do
    [ -s "$payload/$f" ] || { echo "hook: the bundle's root has no boot payload $f" >&2; exit 1; }
done
# the new command line: the bundle's template, plus every parameter the running slot's
# command line has that the template does not set (e.g. the Wi-Fi country first boot added)
booted=$(sed -n 's/.*rauc\.slot=\([AB]\).*/\1/p' /proc/cmdline)
running="$FW/slot-$(echo "$booted" | tr AB ab)/cmdline.txt"
new=$(sed -e "s#@ROOT@#$root#" -e "s#@SLOT@#$RAUC_SLOT_BOOTNAME#" "$payload/cmdline.txt.in" | tr '\n' ' ')
keys=" "; for word in $new; do keys="$keys${word%%=*} "; done
if [ -s "$running" ]; then
    for word in $(cat "$running"); do
        case "$keys" in *" ${word%%=*} "*) ;; *) new="$new $word" ;; esac
    done
fi
remounted=0
if mountpoint -q "$FW" && findmnt -n -o OPTIONS "$FW" | grep -qE '(^|,)ro(,|$)'; then
    mount -o remount,rw "$FW"; remounted=1
fi
trap '[ $remounted = 1 ] && mount -o remount,ro "$FW"' EXIT
rm -rf "$FW/.$dir.new"; mkdir "$FW/.$dir.new"
cp "$payload/vmlinuz" "$payload/initrd.img" "$payload"/*.dtb "$FW/.$dir.new/"
echo "$new" | tr -s ' ' > "$FW/.$dir.new/cmdline.txt"
sync
rm -rf "$FW/$dir"
mv "$FW/.$dir.new" "$FW/$dir"
sync
echo "hook: boot files of slot $RAUC_SLOT_BOOTNAME in $FW/$dir ($(ls "$FW/$dir" | wc -l) files)"
