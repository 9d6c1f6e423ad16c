#!/usr/bin/env bash
# Build the flashable SD image of the speaker:
#   bash image/build.sh                 # Pi Zero / Zero W: Debian bookworm armel
#   bash image/build.sh --arch arm64    # Pi Zero 2 W: same pipeline, Debian arm64
# Output: image/out/resonate-<arch>.img (+ .img.sha256, build log in image/out/build-<arch>.log)
# and resonate-<arch>.json (the OS list Raspberry Pi Imager reads: image/imager/make-manifest.py).
# Update bundles from the same tree: bash image/bundle.sh (after this).
#
# Pipeline (see shared EMBEDDED.md §2.2): mmdebstrap (Debian packages only, cached as a tar)
# -> unpack + customise the tree under qemu-user (the project's wheel, pyalsaaudio 0.11 built
# for the target, codec modules, units, read-only root) -> per-HAT DTBs (fdtoverlay) ->
# genimage (FAT + ext4 + ext4 data, no loop devices, no mounts).
# Network: Debian's mirror (apt/mmdebstrap) and PyPI (pip, for the pyalsaaudio 0.11 sdist and
# the pure-Python dependencies Debian bookworm lacks). No prebuilt OS image is downloaded.
#
# Options:
#   --arch armel|arm64   target (default armel)
#   --stage base|tree|image|all   stop after this stage (default all); earlier stages are reused
#                        when their outputs exist (the base tar is keyed by the package list)
#   --fresh              rebuild the cached base tar
#   --no-kmods           skip building the DAC codec modules (the image then has no DAC driver)
#   --dry-run            check the host and print the plan and the package list; build nothing
#   --out DIR            output directory (default image/out)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
ARCH=armel
STAGE=all
FRESH=0
KMODS=1
DRY=0
OUT="$HERE/out"
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH="$2"; shift 2 ;;
        --stage) STAGE="$2"; shift 2 ;;
        --fresh) FRESH=1; shift ;;
        --no-kmods) KMODS=0; shift ;;
        --dry-run) DRY=1; shift ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
# shellcheck source=packages.sh
. "$HERE/packages.sh"
SUITE=bookworm
MIRROR="${RESONATE_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY="${MIRROR%/debian}/debian-security"
WORK="$OUT/work-$ARCH"
mkdir -p "$OUT" "$WORK"
T0=$(date +%s)
log() { echo "[$(date +%H:%M:%S) +$(( $(date +%s) - T0 ))s] $*"; }

[ "$(id -u)" -eq 0 ] || { echo "image/build.sh must run as root (mmdebstrap, chroot)" >&2; exit 1; }

# ---- host check -------------------------------------------------------------------------
bash "$HERE/setup-host.sh"
case "$ARCH" in armel) QARCH=arm ;; arm64) QARCH=aarch64 ;; esac
arch-test "$ARCH" >/dev/null || { echo "no qemu-user binfmt for $ARCH: see EMBEDDED.md §2.3" >&2; exit 1; }

PKGKEY=$(printf '%s\n' "$SUITE" "$MIRROR" $RUNTIME_PKGS $BUILD_PKGS | sha256sum | cut -c1-12)
BASE_TAR="$WORK/rootfs-base-$PKGKEY.tar"
if [ "$DRY" = 1 ]; then
    echo "arch=$ARCH suite=$SUITE mirror=$MIRROR"
    echo "runtime packages: $(echo $RUNTIME_PKGS)"
    echo "build-only packages (purged before the image): $(echo $BUILD_PKGS)"
    echo "base tar: $BASE_TAR ($( [ -e "$BASE_TAR" ] && echo cached || echo 'to build' ))"
    exit 0
fi

# ---- stage 1: base rootfs (Debian packages only) -----------------------------------------
if [ "$FRESH" = 1 ] || [ ! -s "$BASE_TAR" ]; then
    log "mmdebstrap $SUITE $ARCH (about 12 min on 2 cores)"
    rm -f "$WORK"/rootfs-base-*.tar
    attempt=1
    until mmdebstrap --arch="$ARCH" --variant=minbase --format=tar \
        --components="main non-free-firmware" \
        --aptopt='Acquire::Retries "5"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --include="$(echo $RUNTIME_PKGS $BUILD_PKGS | tr ' ' ',')" \
        "$SUITE" "$BASE_TAR.part" \
        "deb $MIRROR $SUITE main non-free-firmware" \
        "deb $MIRROR $SUITE-updates main non-free-firmware" \
        "deb $SECURITY $SUITE-security main non-free-firmware"; do
        # the mirror sometimes serves a hash/size mismatch mid-sync (EMBEDDED.md §2.2): retry
        [ $attempt -ge 3 ] && { echo "mmdebstrap failed $attempt times" >&2; exit 1; }
        attempt=$((attempt + 1)); log "mmdebstrap failed, retry $attempt in 60 s"; sleep 60
    done
    mv "$BASE_TAR.part" "$BASE_TAR"
    log "base tar: $(du -h "$BASE_TAR" | cut -f1)"
else
    log "reusing $BASE_TAR"
fi
[ "$STAGE" = base ] && exit 0

# ---- stage 2: customised tree ------------------------------------------------------------
eval "$(bash "$HERE/rauc/signing-key.sh" "$OUT")"
KEYRING="$KEYRING" bash "$HERE/customize.sh" "$ARCH" "$BASE_TAR" "$WORK" "$KMODS"
log "tree customised"
[ "$STAGE" = tree ] && exit 0

# ---- stage 3: the SD image ----------------------------------------------------------------
bash "$HERE/mkimage.sh" "$ARCH" "$WORK" "$OUT"
python3 "$HERE/imager/make-manifest.py" --out "$OUT" "$OUT/resonate-$ARCH.img" >/dev/null  # Raspberry Pi Imager's OS list
log "done: $OUT/resonate-$ARCH.img ($(du -h --apparent-size "$OUT/resonate-$ARCH.img" | cut -f1) apparent, $(du -h "$OUT/resonate-$ARCH.img" | cut -f1) allocated) in $(( $(date +%s) - T0 )) s"
