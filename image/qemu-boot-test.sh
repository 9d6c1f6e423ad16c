#!/usr/bin/env bash
# Boot the armel image under `qemu-system-arm -M raspi0` into the speaker's self-test.
#   qemu-boot-test.sh IMAGE [LOG]
# Works on a copy (the image itself is not changed). The copy gets a speaker.txt on its FAT
# partition (mtools, no mount), so first boot is exercised too. The kernel command line adds
# resonate-selftest.service to the boot, which powers off on success *and* failure;
# `timeout` bounds the whole run in case the guest hangs. Exit 0 iff RESONATE-SELFTEST-OK.
# QEMU-only changes (EMBEDDED.md §2.2 step 6 and §2.2a): the DTB gets the two-property
# watchdog patch and no Bluetooth on the PL011 (so it stays the console), and
# systemd.watchdog_device= points nowhere (the emulated watchdog counts host time).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
IMG="$1"
LOG="${2:-$(dirname "$IMG")/qemu-boot.log}"
TIMEOUT="${QEMU_TIMEOUT:-900}"
HAT=hifiberry-dac
WORKD="$(mktemp -d "${TMPDIR:-/tmp}/resonate-qemu.XXXXXX")"
trap 'rm -rf "$WORKD"' EXIT

TEST_IMG="$WORKD/test.img"
cp --sparse=always "$IMG" "$TEST_IMG"
truncate -s 2G "$TEST_IMG"   # QEMU's SD card wants a power-of-two size

boot_off=$(sfdisk -J "$TEST_IMG" | python3 -c "import json,sys; t=json.load(sys.stdin)['partitiontable']; print(t['partitions'][0]['start']*t.get('sectorsize',512))")
FAT="$TEST_IMG@@$boot_off"
export MTOOLS_SKIP_CHECK=1
cat > "$WORKD/speaker.txt" <<EOF
# injected by image/qemu-boot-test.sh
wifi_ssid=QEMU test network
wifi_psk=not a real password
wifi_country=GB
name=QemuSpeaker
hat=$HAT
EOF
mcopy -o -i "$FAT" "$WORKD/speaker.txt" ::/speaker.txt
kernel=$(mdir -b -i "$FAT" ::/ | sed 's|^::/||' | grep '^vmlinuz-' | head -1)
initrd=$(mdir -b -i "$FAT" ::/ | sed 's|^::/||' | grep '^initrd.img-' | head -1)
mcopy -o -i "$FAT" "::/$kernel" "$WORKD/vmlinuz"
mcopy -o -i "$FAT" "::/$initrd" "$WORKD/initrd.img"
mcopy -o -i "$FAT" "::/resonate-$HAT-bcm2835-rpi-zero-w.dtb" "$WORKD/board.dtb"

dtb="$WORKD/qemu.dtb"
cp "$WORKD/board.dtb" "$dtb"
wd=$(fdtget -l "$dtb" /soc | grep '^watchdog@' | head -1)
fdtput -t x "$dtb" "/soc/$wd" reg 0x7e100000 0x114
fdtput -t s "$dtb" "/soc/$wd" reg-names pm
bt=$(fdtget -l "$dtb" /soc/serial@7e201000 2>/dev/null | grep '^bluetooth' | head -1 || true)
[ -n "$bt" ] && fdtput -t s "$dtb" "/soc/serial@7e201000/$bt" status disabled

# the self-test of this checkout (not necessarily the one in the image): script and unit
# written into the copy's root with debugfs -w, no mount
root_off=$(sfdisk -J "$TEST_IMG" | python3 -c "import json,sys; t=json.load(sys.stdin)['partitiontable']; print(t['partitions'][1]['start']*t.get('sectorsize',512))")
for f in /usr/local/sbin/resonate-selftest /etc/systemd/system/resonate-selftest.service; do
    debugfs -w -R "rm $f" "$TEST_IMG?offset=$root_off" >/dev/null 2>&1 || true
    debugfs -w -f - "$TEST_IMG?offset=$root_off" >/dev/null 2>&1 <<DEBUGFS
cd $(dirname $f)
write $HERE/rootfs$f $(basename $f)
sif $(basename $f) mode 0100$( [ "${f#/usr/local/sbin}" != "$f" ] && echo 755 || echo 644)
sif $(basename $f) uid 0
sif $(basename $f) gid 0
DEBUGFS
done

# The self-test unit runs after multi-user.target and powers off on success and on failure.
APPEND="console=ttyAMA0,115200 root=/dev/mmcblk0p2 rootwait ro fsck.repair=yes net.ifnames=0 \
systemd.watchdog_device=/dev/resonate-no-watchdog-in-qemu \
systemd.setenv=SELFTEST_EXPECT_NAME=QemuSpeaker systemd.wants=resonate-selftest.service"

echo "qemu: $kernel $initrd resonate-$HAT-bcm2835-rpi-zero-w.dtb (timeout ${TIMEOUT}s), log $LOG"
start=$(date +%s.%N)
set +e
timeout --kill-after=10 "$TIMEOUT" qemu-system-arm -M raspi0 -nographic -no-reboot \
    -kernel "$WORKD/vmlinuz" -initrd "$WORKD/initrd.img" -dtb "$dtb" -append "$APPEND" \
    -drive "file=$TEST_IMG,if=sd,format=raw" -serial stdio -monitor none </dev/null > "$LOG" 2>&1
rc=$?
set -e
end=$(date +%s.%N)
wall=$(python3 -c "print(f'{$end - $start:.1f}')")
ready=$(grep -a -o 'RESONATE-READY-AT [0-9.]*' "$LOG" | awk '{print $2}' | tail -1 || true)
echo "qemu exit $rc after ${wall}s wall; player ready at ${ready:-?}s guest uptime"
grep -a -E 'selftest: |RESONATE-SELFTEST' "$LOG" | sed 's/^.*resonate-selftest\[[0-9]*\]: //' || true
if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    echo "qemu timed out after ${TIMEOUT}s" >&2
    tail -40 "$LOG" >&2
    exit 1
fi
if grep -a -q 'RESONATE-SELFTEST-OK' "$LOG"; then
    echo "BOOT-TEST-OK wall=${wall}s ready=${ready:-?}s"
    exit 0
fi
tail -60 "$LOG" >&2
exit 1
