"""The 640-node boot storm: virtual clients, the anchor stack, bootd's stack, the runner."""
