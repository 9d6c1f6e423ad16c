#!/usr/bin/env bash
# Stage 2 of image/build.sh: unpack the base tar and turn it into the speaker's root tree.
#   customize.sh ARCH BASE_TAR WORK KMODS(0|1)
# Env: KEYRING (required): the CA certificate update bundles must be signed under.
# Runs target binaries (pip, gcc, depmod, dpkg) in the tree through qemu-user binfmt.
# Only /proc, /sys and /dev are bind-mounted into the tree, and only for the chroot steps.
set -euo pipefail
ARCH="$1"; BASE_TAR="$2"; WORK="$3"; KMODS="$4"
[ -s "${KEYRING:-}" ] || { echo "customize: KEYRING (update bundle CA certificate) not set" >&2; exit 1; }
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
TREE="$WORK/tree"
VENV=/opt/resonate-embedded
T0=$(date +%s)
log() { echo "[customize +$(( $(date +%s) - T0 ))s] $*"; }
# shellcheck source=packages.sh
. "$HERE/packages.sh"

mounted=()
cleanup() {
    for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

if [ -d "$TREE" ]; then
    for m in proc sys dev/pts dev; do umount -l "$TREE/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$TREE"
fi
mkdir -p "$TREE"
log "unpacking $(basename "$BASE_TAR")"
tar -C "$TREE" --numeric-owner -xpf "$BASE_TAR"

for m in proc sys dev dev/pts; do
    mkdir -p "$TREE/$m"
    case $m in
        proc) mount -t proc proc "$TREE/proc" ;;
        sys) mount --rbind /sys "$TREE/sys"; mount --make-rslave "$TREE/sys" ;;
        *) mount --bind "/$m" "$TREE/$m" ;;
    esac
    mounted+=("$TREE/$m")
done
in_tree() { chroot "$TREE" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

KVER=$(ls "$TREE/usr/lib/modules" | sort -V | tail -1)
log "kernel $KVER"

# ---- the player: project wheel + pure-Python deps + pyalsaaudio 0.11 built here ------------
WHEELS="$WORK/wheels"
bash "$HERE/fetch-python.sh" "$WHEELS" > "$WORK/fetch-python.log" 2>&1 || { tail -20 "$WORK/fetch-python.log"; exit 1; }
mkdir -p "$TREE/tmp/wheels"
cp "$WHEELS"/*.whl "$WHEELS"/*.tar.gz "$TREE/tmp/wheels/"
log "venv $VENV (system site-packages: Debian's numpy, av, cryptography)"
in_tree python3 -m venv --system-site-packages --without-pip "$VENV"
PIPT="$VENV/bin/python -m pip --disable-pip-version-check --no-cache-dir -q"
in_tree sh -c "$PIPT install --no-index --no-deps /tmp/wheels/*.whl"
log "building pyalsaaudio 0.11 for $ARCH"
in_tree sh -c "$PIPT install --no-index --no-deps --no-build-isolation /tmp/wheels/pyalsaaudio-0.11.0.tar.gz"
in_tree "$VENV/bin/python" -c "
import importlib.metadata, tempfile, pathlib
from resonate_embedded.identity import load_or_create
ident = load_or_create(pathlib.Path(tempfile.mkdtemp()))  # X25519 with Debian's cryptography
print('identity ok:', ident.client_id[:12], '...')
import importlib.metadata, alsaaudio, numpy, trio, trio_websocket, attrs, zeroconf, noise, cpace, av, cryptography, evdev, gpiod
assert hasattr(alsaaudio.PCM, 'htimestamp'), 'pyalsaaudio without htimestamp'
import resonate_embedded.player, resonate_embedded.firstboot
print('python stack ok: numpy', numpy.__version__, 'pyalsaaudio', importlib.metadata.version('pyalsaaudio'), 'trio', trio.__version__)
"
in_tree "$VENV/bin/python" -m compileall -q "$VENV/lib" >/dev/null || true
ln -sfn "$VENV/bin/resonate-embedded" "$TREE/usr/local/bin/resonate-embedded"  # on root's PATH (ssh)

# ---- DAC codec modules (Debian's kernel lacks them) ---------------------------------------
if [ "$KMODS" = 1 ]; then
    log "building the DAC codec modules (about 1-2 min)"
    bash "$REPO/board/kmod/build-kmods.sh" "$TREE"
else
    log "WARNING: --no-kmods: the image has no DAC codec driver (no ResonateDAC card)"
fi
# the HAT overlays need labelled board DTBs (Debian's arm64 ones have none)
bash "$REPO/board/dtb/add-symbols.sh" "$TREE"

# ---- board data ---------------------------------------------------------------------------
mkdir -p "$TREE/usr/share/resonate-embedded/hats" "$TREE/usr/share/doc/resonate-embedded"
cp "$REPO"/board/hats/*.toml "$TREE/usr/share/resonate-embedded/hats/"
cp "$HERE/boot/speaker.txt" "$TREE/usr/share/resonate-embedded/speaker.txt"
cp "$REPO/README.md" "$TREE/usr/share/doc/resonate-embedded/README.md"
# what `resonate-embedded status` shows and update bundles carry (key=value)
BUILT=$(date -u +%Y-%m-%dT%H:%M:%SZ)
PYVER=$(python3 -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))['project']['version'])" "$REPO/pyproject.toml")
printf '%s\n' "VERSION=${RESONATE_VERSION:-$PYVER+$(date -u -d "$BUILT" +%Y%m%d%H%M)}" "ARCH=$ARCH" \
    "KERNEL=$KVER" "BUILT=$BUILT" > "$TREE/etc/resonate-image-release"

# ---- system configuration -----------------------------------------------------------------
log "system configuration"
cp -a "$HERE/rootfs/." "$TREE/"
chown -R 0:0 "$TREE/etc/systemd" "$TREE/etc/ssh/sshd_config.d" "$TREE/etc/fstab" "$TREE/etc/hostname" "$TREE/etc/hosts"
in_tree useradd --system --user-group --home-dir /var/lib/resonate-embedded --no-create-home \
    --shell /usr/sbin/nologin --groups audio resonate
mkdir -p "$TREE/data/player" "$TREE/data/config" "$TREE/data/ssh" "$TREE/var/lib/resonate-embedded" "$TREE/boot/firmware"
chmod 0700 "$TREE/data/player" "$TREE/data/ssh"
in_tree chown resonate:resonate /data/player
chmod 0755 "$TREE/data/config"
# A/B updates: RAUC's system.conf for this arch, the keyring bundles are checked against
sed -i "s/@ARCH@/$ARCH/" "$TREE/etc/rauc/system.conf"
install -m 644 "$KEYRING" "$TREE/etc/rauc/keyring.pem"
mkdir -p "$TREE/data/rauc" "$TREE/data/update"
# networking (Wi-Fi client, setup hotspot, resolver): its own script
bash "$HERE/customize-network.sh" "$TREE"
rm -f "$TREE"/etc/ssh/ssh_host_*  # per-speaker keys are made on first boot
: > "$TREE/etc/machine-id"          # transient id on the read-only root
rm -f "$TREE/var/lib/dbus/machine-id"; ln -sfn /etc/machine-id "$TREE/var/lib/dbus/machine-id"
in_tree passwd -l root >/dev/null     # no password login, by anyone
in_tree systemctl enable resonate-embedded.service resonate-firstboot.service resonate-sshkeys.service \
    resonate-update-check.service resonate-update-confirm.service \
    systemd-resolved.service avahi-daemon.service ssh.service >/dev/null 2>&1
in_tree systemctl mask apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
    e2scrub_reap.service fstrim.timer dpkg-db-backup.timer systemd-rfkill.service \
    systemd-rfkill.socket >/dev/null 2>&1 || true

# ---- first-boot defaults (the same code the speaker runs) ---------------------------------
cp "$HERE/boot/speaker.txt" "$TREE/boot/firmware/speaker.txt"
in_tree "$VENV/bin/python" -m resonate_embedded.firstboot --boot /boot/firmware --data /data \
    --hats /usr/share/resonate-embedded/hats
test -s "$TREE/data/config/player.toml"

# ---- boot files: read-only root, our config.txt include, quiet console ---------------------
FW="$TREE/boot/firmware"
sed -i -e 's/ rw / ro /; s/^rw /ro /; s/ rw$/ ro/' "$FW/cmdline.txt"
grep -qw ro "$FW/cmdline.txt" || sed -i 's/$/ ro/' "$FW/cmdline.txt"
grep -qw quiet "$FW/cmdline.txt" || sed -i 's/$/ quiet/' "$FW/cmdline.txt"
cat >> "$FW/config.txt" <<'EOF'

# ---- Resonate speaker ----
[all]
disable_splash=1
boot_delay=0
dtparam=audio=off
# the DAC HAT's device tree (merged at build time), chosen by hat= in speaker.txt
include resonate-hat.txt
EOF

# ---- drop the build-only packages ---------------------------------------------------------
log "purging build-only packages"
in_tree apt-mark manual $RUNTIME_PKGS >/dev/null
in_tree apt-mark hold $KERNEL_PKGS "linux-image-$KVER" >/dev/null
# shellcheck disable=SC2086
in_tree env DEBIAN_FRONTEND=noninteractive apt-get -y -qq purge --autoremove \
    $(echo $BUILD_PKGS | tr ' ' '\n' | grep -v '^linux-headers-' ) "linux-headers-$KVER" \
    $(in_tree dpkg-query -W -f '${Package}\n' 'linux-headers-*' 'linux-kbuild-*' 2>/dev/null) >/dev/null
in_tree apt-get clean
rm -rf "$TREE/tmp/"* "$TREE/var/lib/apt/lists/"* "$TREE/var/cache/apt/"*.bin "$TREE/var/log/"*.log
in_tree "$VENV/bin/python" -c "import alsaaudio, numpy, resonate_embedded.player" # still runs
# the purge may have re-run the firmware hooks: re-check our boot edits survived
grep -q 'include resonate-hat.txt' "$FW/config.txt"
grep -qw ro "$FW/cmdline.txt"
cleanup; mounted=()
log "tree ready: $(du -xsh "$TREE" | cut -f1)"
