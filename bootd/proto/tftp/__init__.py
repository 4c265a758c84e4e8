"""bootd.proto.tftp."""
