# bootd — `make test` and `make demo` set up everything they need on Debian (as root).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
PYTEST_ARGS ?=

# Debian packages the tests, the demo and the benches use (real clients and peers).
APT_PKGS := iproute2 procps curl ca-certificates sqlite3 cpio xz-utils \
	isc-dhcp-client busybox-static udhcpc kea-admin kea-dhcp4-server dnsmasq-base \
	tftp-hpa atftp tftpd-hpa nginx-light wrk nftables \
	qemu-system-x86 ipxe-qemu ovmf cloud-init systemd gcc
# QEMU end-to-end boots: iPXE binaries for the TFTP root, squashfs root images, and
# Debian's dracut (core only: no kernel hooks, initramfs-tools stays) for the live flavour.
APT_PKGS += ipxe squashfs-tools dracut-core dracut-live dracut-network

.PHONY: all venv apt-deps test lint demo bench clean

all: test

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test,bench]'
	touch $@

venv: $(VENV)/.installed

# Install missing Debian packages without starting their services (policy-rc.d 101).
apt-deps:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt-get install:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "need root to install: $$missing" >&2; exit 1; fi; \
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
		export DEBIAN_FRONTEND=noninteractive; \
		( apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing ) > /tmp/bootd-apt.log 2>&1; rc=$$?; \
		rm -f /usr/sbin/policy-rc.d; \
		if [ $$rc != 0 ]; then tail -20 /tmp/bootd-apt.log; exit $$rc; fi; \
	fi

test: apt-deps venv
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check bootd tests bench
	$(VENV)/bin/ruff format --check bootd tests bench
	$(VENV)/bin/mypy

demo: apt-deps venv
	$(PY) -m bench.demo

bench: apt-deps venv
	mkdir -p bench/results
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .artifacts bench/results .pytest_cache .mypy_cache .ruff_cache
