# Debian packages of the image (sourced by image/build.sh). Two groups:
#   RUNTIME: what the speaker runs;  BUILD: only to build pyalsaaudio and the codec
#   modules inside the tree under qemu-user, purged again before the image is made.
# Every package comes from Debian bookworm (main + non-free-firmware for the Pi firmware).
RUNTIME_COMMON="systemd-sysv udev kmod iproute2 netbase dbus ca-certificates
  wpasupplicant firmware-brcm80211 wireless-regdb raspi-firmware initramfs-tools
  systemd-resolved systemd-timesyncd avahi-daemon libnss-mdns openssh-server alsa-utils
  python3 python3-numpy python3-trio python3-trio-websocket python3-attr python3-av
  python3-cryptography python3-segno python3-ifaddr python3-evdev python3-libgpiod
  network-manager dnsmasq-base iw rauc rauc-service python3-yaml"
BUILD_COMMON="python3-dev python3-pip python3-setuptools python3-wheel gcc make libc6-dev
  libasound2-dev linux-source-6.1 xz-utils"
case "$ARCH" in
  armel) KERNEL_PKGS="linux-image-rpi"; HEADER_PKGS="linux-headers-rpi" ;;
  arm64) KERNEL_PKGS="linux-image-arm64"; HEADER_PKGS="linux-headers-arm64" ;;
  *) echo "unsupported arch $ARCH (armel or arm64)" >&2; exit 2 ;;
esac
RUNTIME_PKGS="$RUNTIME_COMMON $KERNEL_PKGS"
BUILD_PKGS="$BUILD_COMMON $HEADER_PKGS"
