"""bootd: network-boot diskless HPC nodes from one asyncio process."""

__version__ = "0.1.0"
