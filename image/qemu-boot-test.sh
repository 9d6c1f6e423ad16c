#!/usr/bin/env bash
# Boot the image under QEMU into a self-test, following reboots: the armel image as a Pi Zero W
# (`qemu-system-arm -M raspi0`), the arm64 one as a Zero 2 W (`qemu-system-aarch64 -M raspi3b`,
# the same BCM2837 with 1 GiB, booting the Zero 2 W device tree).
#   qemu-boot-test.sh IMAGE [LOG]
# Works on a copy (the image itself is not changed). The copy gets a speaker.txt on its FAT
# partition (mtools, no mount), so first boot is exercised too, and the self-test scripts and
# units of this checkout (image/rootfs/.../resonate-selftest*, written with debugfs -w into
# every root slot that holds a file system). What to boot is chosen like the Pi firmware does
# (image/qemu-firmware.py: config.txt, or tryboot.txt once after the guest rebooted with
# "0 tryboot" — read from the kernel's "Restarting system with command" line — then os_prefix=).
# QEMU runs with -no-reboot: a guest reboot ends one QEMU run and the next boot starts here.
# The self-test powers the guest off on success and on failure; `timeout` bounds every boot.
# Exit 0 iff the last boot printed RESONATE-SELFTEST-OK.
# QEMU-only changes (EMBEDDED.md §2.2 step 6 and §2.2a): the DTB gets the two-property
# watchdog patch and no Bluetooth on the PL011 (so it stays the console), the console is the
# serial port, and systemd.watchdog_device= points nowhere (the emulated watchdog counts host time).
# The emulated BCM2835 has no running I2S clock, so the player writes to ALSA's null device
# (systemd.setenv=RESONATE_PLAYER_ARGS=--device=null): READY=1 means it took audio.
# Environment:
#   SELFTEST_UNIT  self-test unit started with systemd.wants= (default resonate-selftest.service)
#   SPEAKER_TXT    file written as speaker.txt (default: a test network and the name QemuSpeaker)
#   DATA_FILES     "LOCAL=/path/on/data ..." files put on the data partition before the first boot
#   DATA_MB        grow the copy's data partition to this size first (room for DATA_FILES)
#   MAX_BOOTS      boots to follow (default 4)    QEMU_TIMEOUT  seconds per boot (default 900)
#   KEEP_IMAGE     keep the test copy at this path (to inspect it afterwards)
#   QEMU_APPEND    more kernel parameters (e.g. systemd.setenv=...)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
IMG="$1"
LOG="${2:-$(dirname "$IMG")/qemu-boot.log}"
TIMEOUT="${QEMU_TIMEOUT:-900}"
MAX_BOOTS="${MAX_BOOTS:-4}"
UNIT="${SELFTEST_UNIT:-resonate-selftest.service}"
WORKD="$(mktemp -d "${TMPDIR:-/tmp}/resonate-qemu.XXXXXX")"
trap 'rm -rf "$WORKD"' EXIT

TEST_IMG="${KEEP_IMAGE:-$WORKD/test.img}"
cp --sparse=always "$IMG" "$TEST_IMG"

part_offset() {  # part_offset N -> byte offset of partition N (1-based)
    sfdisk -J "$TEST_IMG" | python3 -c "import json,sys; t=json.load(sys.stdin)['partitiontable']; print(t['partitions'][$1-1]['start']*t.get('sectorsize',512))"
}
boot_off=$(part_offset 1)
data_off=$(part_offset 4)
size=$(stat -c %s "$TEST_IMG")
[ -n "${DATA_MB:-}" ] && size=$(( data_off + DATA_MB * 1048576 ))
p2=$((1 << 30)); while [ $p2 -lt "$size" ]; do p2=$((p2 * 2)); done
truncate -s "$p2" "$TEST_IMG"   # QEMU's SD card wants a power-of-two size
export MTOOLS_SKIP_CHECK=1
if [ -n "${SPEAKER_TXT:-}" ]; then
    cp "$SPEAKER_TXT" "$WORKD/speaker.txt"
else
    cat > "$WORKD/speaker.txt" <<TXT
# injected by image/qemu-boot-test.sh
wifi_ssid=QEMU test network
wifi_psk=not a real password
wifi_country=GB
name=QemuSpeaker
hat=hifiberry-dac
TXT
fi
mcopy -o -i "$TEST_IMG@@$boot_off" "$WORKD/speaker.txt" ::/speaker.txt
expect_name=$(sed -n 's/^name=//p' "$WORKD/speaker.txt" | head -1)
if mtype -i "$TEST_IMG@@$boot_off" ::/config.txt | grep -q '^arm_64bit=1'; then
    BOARD=pi02; QEMU=(qemu-system-aarch64 -M raspi3b)
else
    # -icount: the guest's clock counts its own instructions. Without it QEMU's BCM2835 system
    # timer compares against host time, and a guest that programs a compare 15 us ahead, then
    # is descheduled by a busy host for longer, waits for the 32-bit counter to wrap: no tick
    # for 71.6 min (seen as an emulator "freeze" with no guest CPU time, on loaded hosts).
    # (The Zero 2 W's Cortex-A53 ticks on the ARM generic timer, which cannot miss a compare.)
    BOARD=pi0w; QEMU=(qemu-system-arm -M raspi0 -icount shift=auto)
fi

debugfs_put() {  # debugfs_put OFFSET LOCAL DEST MODE: write one file into an ext4 partition
    local off="$1" src="$2" dest="$3" mode="$4" dir
    dir=$(dirname "$dest")
    debugfs -w -R "rm $dest" "$TEST_IMG?offset=$off" >/dev/null 2>&1 || true
    { d=""; for part in ${dir//\// }; do d="$d/$part"; echo "mkdir $d"; done
      echo "cd $dir"; echo "write $src $(basename "$dest")"
      echo "sif $(basename "$dest") mode 0100$mode"; echo "sif $(basename "$dest") uid 0"
      echo "sif $(basename "$dest") gid 0"; } | debugfs -w -f - "$TEST_IMG?offset=$off" >/dev/null 2>&1
}
# this checkout's self-tests, into every root slot with a file system
for n in 2 3; do
    off=$(part_offset $n)
    debugfs -R "stats" "$TEST_IMG?offset=$off" >/dev/null 2>&1 || continue
    for f in "$HERE"/rootfs/usr/local/sbin/resonate-selftest* "$HERE"/rootfs/etc/systemd/system/resonate-selftest*.service; do
        dest="${f#"$HERE/rootfs"}"
        case "$dest" in /usr/local/sbin/*) mode=755 ;; *) mode=644 ;; esac
        debugfs_put "$off" "$f" "$dest" "$mode"
    done
done
if [ -n "${DATA_MB:-}" ]; then  # a bigger data partition in the copy (room for test bundles)
    data_start=$(( data_off / 512 ))
    echo "$data_start,$(( DATA_MB * 2048 ))" | sfdisk -q --no-reread -N 4 "$TEST_IMG" >/dev/null
    dd if="$TEST_IMG" of="$WORKD/data.ext4" bs=4M iflag=skip_bytes,count_bytes skip="$data_off" \
        count=$(( $(sfdisk -J "$TEST_IMG" | python3 -c "import json,sys; print(json.load(sys.stdin)['partitiontable']['partitions'][3]['size'])") * 512 )) status=none
    truncate -s "${DATA_MB}M" "$WORKD/data.ext4"
    e2fsck -fy "$WORKD/data.ext4" >/dev/null 2>&1 || true
    resize2fs -f "$WORKD/data.ext4" >/dev/null 2>&1
    dd if="$WORKD/data.ext4" of="$TEST_IMG" bs=4M oflag=seek_bytes seek="$data_off" conv=notrunc,sparse status=none
    rm -f "$WORKD/data.ext4"
fi
for spec in ${DATA_FILES:-}; do
    debugfs_put "$data_off" "${spec%%=*}" "${spec#*=}" 644
done

: > "$LOG"
tryboot=0
result=1
for ((boot = 1; boot <= MAX_BOOTS; boot++)); do
    rm -f "$WORKD"/kernel "$WORKD"/initrd "$WORKD"/dtb "$WORKD"/cmdline
    fw=$(python3 "$HERE/qemu-firmware.py" "$TEST_IMG" "$boot_off" "$WORKD" --board $BOARD $( [ $tryboot = 1 ] && echo --tryboot ))
    eval "$fw"
    dtb="$WORKD/qemu.dtb"
    cp "$DTB" "$dtb"
    wd=$(fdtget -l "$dtb" /soc | grep '^watchdog@' | head -1)
    fdtput -t x "$dtb" "/soc/$wd" reg 0x7e100000 0x114
    fdtput -t s "$dtb" "/soc/$wd" reg-names pm
    bt=$(fdtget -l "$dtb" /soc/serial@7e201000 2>/dev/null | grep '^bluetooth' | head -1 || true)
    [ -n "$bt" ] && fdtput -t s "$dtb" "/soc/serial@7e201000/$bt" status disabled
    cmdline=$(tr '\n' ' ' < "$CMDLINE" | sed -E 's/(^| )console=[^ ]*//g; s/(^| )quiet( |$)/ /g')
    APPEND="console=ttyAMA0,115200 $cmdline systemd.watchdog_device=/dev/resonate-no-watchdog-in-qemu \
systemd.setenv=SELFTEST_EXPECT_NAME=$expect_name systemd.wants=$UNIT \
systemd.setenv=RESONATE_PLAYER_ARGS=--device=null ${QEMU_APPEND:-}"
    slot=$(grep -o 'rauc\.slot=[A-Z]' <<<"$cmdline" || echo "no rauc.slot")
    echo "boot $boot: $BOARD $CONFIG -> ${PREFIX:-/} ($slot), unit $UNIT, timeout ${TIMEOUT}s"
    echo "=== boot $boot: $CONFIG -> ${PREFIX:-/} ($slot) ===" >> "$LOG"
    start=$(date +%s.%N)
    set +e
    timeout --kill-after=10 "$TIMEOUT" "${QEMU[@]}" -nographic -no-reboot \
        -kernel "$KERNEL" ${INITRD:+-initrd "$INITRD"} -dtb "$dtb" -append "$APPEND" \
        -drive "file=$TEST_IMG,if=sd,format=raw" -serial stdio -monitor none </dev/null > "$WORKD/boot.log" 2>&1
    rc=$?
    set -e
    cat "$WORKD/boot.log" >> "$LOG"
    wall=$(python3 -c "import time; print(f'{time.time() - $start:.1f}')")
    ready=$(grep -a -o 'RESONATE-READY-AT [0-9.]*' "$WORKD/boot.log" | awk '{print $2}' | tail -1 || true)
    grep -a -E 'selftest: |RESONATE-SELFTEST' "$WORKD/boot.log" | sed 's/^.*resonate-selftest[-a-z]*\[[0-9]*\]: //' || true
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        echo "boot $boot: qemu timed out after ${TIMEOUT}s" >&2
        tail -40 "$WORKD/boot.log" >&2
        break
    fi
    if grep -a -q "Restarting system with command '[^']*tryboot" "$WORKD/boot.log"; then
        echo "boot $boot: rebooted with tryboot after ${wall}s wall (player ready at ${ready:-?}s)"
        tryboot=1; continue
    elif grep -a -q "reboot: Restarting system" "$WORKD/boot.log"; then
        echo "boot $boot: rebooted after ${wall}s wall (player ready at ${ready:-?}s)"
        tryboot=0; continue
    fi
    echo "boot $boot: qemu exit $rc after ${wall}s wall; player ready at ${ready:-?}s guest uptime"
    if grep -a -q 'RESONATE-SELFTEST-OK' "$WORKD/boot.log"; then
        echo "BOOT-TEST-OK boots=$boot wall=${wall}s ready=${ready:-?}s"
        result=0
    else
        tail -60 "$WORKD/boot.log" >&2
    fi
    break
done
[ $boot -le "$MAX_BOOTS" ] || echo "still rebooting after $MAX_BOOTS boots" >&2
exit $result
