"""bootd vs dnsmasq vs kea-dhcp4 on one veth pair: 640-client avalanche and sustained rate."""
