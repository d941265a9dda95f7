# vmpod: `make run` and `make test` set up a fresh machine (packages, guest kernel) on their own.
SHELL := /bin/bash
GUEST_DIR := build/guest
RELEASE := target/release
# The agent is the guest's only program: static, glibc (there is no musl target here).
AGENT_TARGET := x86_64-unknown-linux-gnu
AGENT := target/$(AGENT_TARGET)/release/vmpod-agent
PREFIX ?= /usr/local
SHARE := $(PREFIX)/share/vmpod
export VMPOD_GUEST_DIR := $(CURDIR)/$(GUEST_DIR)

FUZZ_SECONDS ?= 60
# vmpod backends the isolation suite tries (vmm is left out, with the reason, where it is too slow).
ISOLATION_BACKENDS ?= qemu,vmm

.PHONY: all setup build agent guest images run test fuzz bench isolation install fmt lint clean

all: build guest

setup:
	@scripts/setup.sh

build: setup
	cargo build --release --workspace

agent: setup
	RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p vmpod-agent --target $(AGENT_TARGET)

# The kernel build is cached outside the tree by config hash (guest-kernel/build.sh).
guest: setup agent
	@guest-kernel/build.sh $(GUEST_DIR) >/dev/null
	@scripts/build-agent-initramfs.sh $(AGENT) $(GUEST_DIR) >/dev/null
	@scripts/build-busybox-rootfs.sh $(GUEST_DIR) >/dev/null
	@scripts/build-busybox-image.sh $(GUEST_DIR) >/dev/null
	@scripts/build-test-initramfs.sh $(GUEST_DIR) >/dev/null
	@scripts/build-tiny-guest.sh $(GUEST_DIR)

# The default image, `busybox`, built locally (no registry needed) and imported; a second
# import converts nothing.
images: build guest
	@$(RELEASE)/vmpod image import $(GUEST_DIR)/busybox-oci busybox:latest >/dev/null

# Runs a container in its own microVM.
run: images
	$(RELEASE)/vmpod run --rm busybox echo hello from a microVM

test: images
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/check-imports.py
	scripts/test_isolation.py
	cargo test --workspace --release
	scripts/fuzz.sh 20

# Every fuzz target for FUZZ_SECONDS each.
fuzz: setup
	scripts/fuzz.sh $(FUZZ_SECONDS)

bench: images
	scripts/bench_boot.py
	scripts/bench_devices.py
	cargo run --release -p vmpod-agent --example bench_agent
	scripts/bench_run.py
	scripts/bench_shim.py
	scripts/bench_pods.py
	scripts/bench_template.py
	scripts/bench_volumes.py
	scripts/bench_fs_servers.py
	scripts/bench_publish.py
	scripts/bench_pull.py
	cargo build --release -p vmpod-sandbox --example bench_jail_boot
	scripts/bench_jail.py

# One probe suite on the host, under runc and under vmpod (each backend): what a container sees
# of the host's kernel and what it can do to it. Needs what `make build guest` makes; starts
# containers and VMs, so it is not part of `make test`.
isolation:
	scripts/isolation.py --backends $(ISOLATION_BACKENDS)

install: build guest
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SHARE)
	install -m 0755 $(RELEASE)/vmpod $(RELEASE)/vmpod-vmm $(RELEASE)/vmpod-vhost-user \
		$(RELEASE)/containerd-shim-vmpod-v2 $(DESTDIR)$(PREFIX)/bin/
	install -m 0644 $(GUEST_DIR)/vmlinux $(GUEST_DIR)/initramfs.cpio $(DESTDIR)$(SHARE)/

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	scripts/check-imports.py

clean:
	cargo clean
	rm -rf build fuzz/target
