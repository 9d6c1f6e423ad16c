#!/usr/bin/env bash
# Networking of the speaker's root tree (called by image/customize.sh, tree not chrooted into):
# NetworkManager (Wi-Fi client, wired DHCP, the setup hotspot), systemd-resolved, avahi.
#   customize-network.sh TREE
# Configuration: rootfs/etc/NetworkManager/ (keyfiles on the data partition, powersave off,
# resolved), rootfs/etc/systemd/system/NetworkManager.service.d/ (state on a tmpfs),
# rootfs/etc/systemd/system/resonate-setup.service (the setup hotspot, started with wlan0).
set -euo pipefail
TREE="$1"
in_tree() { chroot "$TREE" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

# the Wi-Fi profile (resonate-wifi.nmconnection, written by resonate-firstboot) holds a key:
# NM reads only root-owned files nobody else can read, from a directory nobody else can list
install -d -m 0700 -o 0 -g 0 "$TREE/data/config/nm-connections"
ln -sfn /run/systemd/resolve/stub-resolv.conf "$TREE/etc/resolv.conf"
in_tree systemctl enable NetworkManager.service resonate-setup.service >/dev/null 2>&1
# Nothing waits for "online": the speaker plays, and is found, as soon as it has an address.
# wpa_supplicant is started by NetworkManager over D-Bus when there is a radio.
in_tree systemctl disable NetworkManager-wait-online.service wpa_supplicant.service >/dev/null 2>&1
