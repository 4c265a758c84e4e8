"""bootd.store."""
