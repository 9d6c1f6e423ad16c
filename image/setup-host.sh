#!/usr/bin/env bash
# Host tools for the SD image pipeline (image/build.sh) and its tests (tests/image/).
# Idempotent; run as root (or with sudo). Not part of .ci/setup on purpose: only the image
# path needs these (mmdebstrap, qemu-user binfmt, genimage, mtools, e2fsprogs, QEMU system).
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

PKGS="mmdebstrap arch-test qemu-user-static binfmt-support genimage mtools dosfstools e2fsprogs
      e2tools fdisk device-tree-compiler qemu-system-arm debian-archive-keyring python3-pip
      python3-venv ca-certificates zstd zip unzip rauc squashfs-tools openssl cpp"
need=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"; done
if [ -n "$need" ]; then
    echo "== image host packages:$need"
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends $need >/dev/null
fi

# qemu-user through binfmt_misc, so the armel/arm64 tree's maintainer scripts run here
# (EMBEDDED.md §2.1: works on this kind of machine; bookworm has no update-binfmts without
# binfmt-support, so register by hand when needed).
mountpoint -q /proc/sys/fs/binfmt_misc || $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
for a in arm aarch64; do
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-$a ] && [ -e /usr/lib/binfmt.d/qemu-$a.conf ]; then
        $SUDO sh -c "cat /usr/lib/binfmt.d/qemu-$a.conf > /proc/sys/fs/binfmt_misc/register" || true
    fi
done
for a in armel arm64; do
    if arch-test "$a" >/dev/null 2>&1; then echo "== arch-test $a: ok"; else echo "== arch-test $a: FAILED (no binfmt emulation)" >&2; fi
done
