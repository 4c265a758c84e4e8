"""bootd.proto."""
