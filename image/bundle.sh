#!/usr/bin/env bash
# Build a signed RAUC update bundle from the root tree of the last image build.
#   bash image/bundle.sh [--arch armel] [--version V] [--overlay DIR] [--out FILE]
# Output: image/out/resonate-<arch>-<version>.raucb. The bundle holds the root file system
# (ext4 image of image/out/work-<arch>/tree, the same tree the SD image was made from, with its
# boot payload: kernel, initrd, DTBs), the hook that installs that payload into the slot's
# directory on the FAT partition, and the signature (image/rauc/signing-key.sh: development
# key unless RESONATE_SIGNING_KEY/_CERT/RESONATE_KEYRING are given).
# Options:
#   --version V    bundle and image version (default: VERSION in the tree's release file)
#   --overlay DIR  files added to (or replacing files in) the bundle's root, e.g. site config
#   --out FILE     where to write the bundle
# Needs root only for a bind mount (the tree's /boot/firmware and /data are left out).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ARCH=armel; VERSION=""; OVERLAY=""; OUTFILE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) ARCH="$2"; shift 2 ;;
        --version) VERSION="$2"; shift 2 ;;
        --overlay) OVERLAY="$2"; shift 2 ;;
        --out) OUTFILE="$2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
OUT="$HERE/out"
TREE="$OUT/work-$ARCH/tree"
[ -s "$TREE/usr/lib/resonate-embedded/boot/vmlinuz" ] || { echo "bundle: no built tree in $TREE (run image/build.sh first)" >&2; exit 1; }
RELEASE="$TREE/etc/resonate-image-release"
VERSION="${VERSION:-$(sed -n 's/^VERSION=//p' "$RELEASE")}"
[[ "$VERSION" =~ ^[A-Za-z0-9][A-Za-z0-9.+~_-]*$ ]] || { echo "bundle: bad version '$VERSION'" >&2; exit 2; }
OUTFILE="${OUTFILE:-$OUT/resonate-$ARCH-$VERSION.raucb}"
eval "$(bash "$HERE/rauc/signing-key.sh" "$OUT")"
T0=$(date +%s)
WORKD=$(mktemp -d "${TMPDIR:-/tmp}/resonate-bundle.XXXXXX")
mounted=()
cleanup() { for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done; rm -rf "$WORKD"; }
trap cleanup EXIT

# the root file system: the tree without what lives on other partitions
used_mb=$(( $(du -xsm "$TREE" | cut -f1) - $(du -xsm "$TREE/boot/firmware" | cut -f1) - $(du -xsm "$TREE/data" | cut -f1) ))
ROOT_MB=$(( ( (used_mb * 6 / 5 + 96) + 63) / 64 * 64 ))
mkdir -p "$WORKD/empty" "$WORKD/bundle"
for m in boot/firmware data; do mount --bind "$WORKD/empty" "$TREE/$m"; mounted+=("$TREE/$m"); done
mke2fs -q -t ext4 -L root -d "$TREE" -E root_owner=0:0 "$WORKD/bundle/rootfs.ext4" "${ROOT_MB}M"
for m in "${mounted[@]}"; do umount "$m"; done; mounted=()

# this bundle's release file, and the overlay, written into the ext4 image (no mount)
mkdir -p "$WORKD/overlay/etc"
[ -n "$OVERLAY" ] && cp -a "$OVERLAY/." "$WORKD/overlay/"
sed -e "s/^VERSION=.*/VERSION=$VERSION/" "$RELEASE" > "$WORKD/overlay/etc/resonate-image-release"
(cd "$WORKD/overlay" && find . -mindepth 1 -type d | sed 's#^\.##' | sort) | while read -r d; do
    echo "mkdir $d"
done > "$WORKD/debugfs.cmds"
(cd "$WORKD/overlay" && find . -type f | sed 's#^\.##' | sort) | while read -r f; do
    mode=$(stat -c %a "$WORKD/overlay$f"); name=$(basename "$f")
    printf 'cd %s\nrm %s\nwrite %s %s\nsif %s mode 0100%s\nsif %s uid 0\nsif %s gid 0\n' \
        "$(dirname "$f")" "$name" "$WORKD/overlay$f" "$name" "$name" "$mode" "$name" "$name"
done >> "$WORKD/debugfs.cmds"
debugfs -w -f "$WORKD/debugfs.cmds" "$WORKD/bundle/rootfs.ext4" >/dev/null 2>&1
debugfs -R "cat /etc/resonate-image-release" "$WORKD/bundle/rootfs.ext4" 2>/dev/null | grep -qx "VERSION=$VERSION"

sed -e "s/@ARCH@/$ARCH/g" -e "s/@VERSION@/$VERSION/g" "$HERE/rauc/manifest.raucm.in" > "$WORKD/bundle/manifest.raucm"
install -m 755 "$HERE/rauc/hook.sh" "$WORKD/bundle/hook.sh"
rm -f "$OUTFILE"
rauc bundle --cert="$CERT" --key="$KEY" --keyring="$KEYRING" "$WORKD/bundle" "$OUTFILE" >/dev/null
rauc info --keyring="$KEYRING" "$OUTFILE" >/dev/null 2>&1 || { echo "bundle: rauc info cannot verify $OUTFILE" >&2; exit 1; }
echo "bundle: $OUTFILE ($(du -m --apparent-size "$OUTFILE" | cut -f1) MiB, root image ${ROOT_MB} MiB, version $VERSION) in $(( $(date +%s) - T0 )) s"
