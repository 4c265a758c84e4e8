"""bootd.tftp."""
