#!/bin/sh
# udhcpc event script: configure the leased address and default route.
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/$mask" dev "$interface"
        [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
        echo "bootd-initramfs: lease $ip/$mask on $interface from ${serverid:-?}"
        ;;
esac
exit 0
