"""bootd.proto.dhcp."""
