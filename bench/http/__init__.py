"""HTTP benchmark: bootd vs nginx."""
