#!/bin/sh
# Initramfs /init: what dracut's live boot does with root=live:URL, in busybox sh.
# Modules → DHCP on the boot interface → rootfs over HTTP into RAM → overlayfs
# (squashfs lower, tmpfs upper) → switch_root into the image's /sbin/init.
export PATH=/bin:/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run

say() { echo "bootd-initramfs: $*"; }
fail() {
    echo "BOOTD-E2E-FAIL: initramfs: $*"
    poweroff -f
    sleep 30
}

say "loading modules"
while read -r ko; do
    insmod "/lib/modules/$ko" || fail "insmod $ko"
done < /etc/modules.order

ROOT_URL=""
BOOTIF=""
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=live:*) ROOT_URL="${arg#root=live:}" ;;
        BOOTIF=*) BOOTIF="${arg#BOOTIF=}" ;;
        bootd.probe=1) say "probe boot: powering off"; poweroff -f; sleep 30 ;;
    esac
done
[ -n "$ROOT_URL" ] || fail "no root=live:URL on the kernel command line"

# The boot interface: the one whose MAC is BOOTIF (01-aa-bb-..), else the first ethernet.
want_mac=$(echo "${BOOTIF#01-}" | tr 'A-F-' 'a-f:')
IFACE=""
tries=0
while [ -z "$IFACE" ] && [ $tries -lt 50 ]; do
    for dev in /sys/class/net/*; do
        name="${dev##*/}"
        [ "$name" = lo ] && continue
        mac=$(cat "$dev/address")
        if [ -z "$want_mac" ] || [ "$mac" = "$want_mac" ]; then IFACE="$name"; break; fi
    done
    [ -n "$IFACE" ] || { tries=$((tries + 1)); sleep 0.1; }
done
[ -n "$IFACE" ] || fail "no network interface (BOOTIF=$BOOTIF)"
ip link set lo up
ip link set "$IFACE" up
say "DHCP on $IFACE"
udhcpc -i "$IFACE" -s /etc/udhcpc.script -t 10 -T 2 -n -q -f \
    || fail "no DHCP lease on $IFACE"

say "fetching root image $ROOT_URL"
mkdir -p /run/live /run/live/lower /run/live/rw
n=0
until wget -q -O /run/live/rootfs.img "$ROOT_URL"; do
    n=$((n + 1))
    [ $n -ge 3 ] && fail "cannot download $ROOT_URL"
    sleep 1
done
say "root image: $(wc -c < /run/live/rootfs.img) bytes"
mount -t squashfs -o loop,ro /run/live/rootfs.img /run/live/lower || fail "mount squashfs"
mount -t tmpfs -o mode=0755 tmpfs /run/live/rw || fail "mount tmpfs upper"
mkdir -p /run/live/rw/upper /run/live/rw/work /newroot
mount -t overlay overlay \
    -o lowerdir=/run/live/lower,upperdir=/run/live/rw/upper,workdir=/run/live/rw/work /newroot \
    || fail "mount overlay"
echo "$IFACE" > /run/live/iface
for m in dev proc sys run; do
    mkdir -p "/newroot/$m"
    mount --move "/$m" "/newroot/$m" || fail "move /$m"
done
say "switch_root"
exec switch_root /newroot /sbin/init
