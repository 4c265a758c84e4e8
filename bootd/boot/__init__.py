"""bootd.boot."""
