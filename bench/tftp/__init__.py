"""TFTP benchmark: bootd vs dnsmasq vs tftpd-hpa (`python -m bench.tftp`)."""
