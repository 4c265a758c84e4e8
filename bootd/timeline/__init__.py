"""bootd.timeline."""
