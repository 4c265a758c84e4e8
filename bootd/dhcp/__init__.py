"""bootd.dhcp."""
