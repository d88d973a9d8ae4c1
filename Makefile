# layerfs — see README.md. `make build` is idempotent and quiet when there is nothing to do.
SHELL := /bin/bash
NODE_BIN := node_modules/.bin
APT_PACKAGES := libfuse2 fuse3 libfuse3-dev attr zlib1g-dev
FIXTURE_PACKAGES := libarchive-tools umoci pigz skopeo zstd util-linux uidmap libcap2-bin

.PHONY: build system-deps fixtures demo test soak bench clean

build: system-deps node_modules/.installed native dist/.built

# apt-get only when a package is missing (dpkg -s is quick)
system-deps:
	@missing=""; for p in $(APT_PACKAGES) $(EXTRA_APT); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

node_modules/.installed: package.json package-lock.json
	@npm ci --no-audit --no-fund --loglevel=error 2>&1 | grep -v 'nodedir\|install-scripts' || true
	@touch $@

.PHONY: native
native: node_modules/.installed
	@bash scripts/build-native.sh

dist/.built: node_modules/.installed tsconfig.json $(shell find src test bench -name "*.ts" 2>/dev/null)
	@$(NODE_BIN)/tsc -p tsconfig.json
	@touch $@

fixtures: build
	@$(MAKE) -s system-deps EXTRA_APT="$(FIXTURE_PACKAGES)"
	@bash test/fixtures/build-fixtures.sh "$${LAYERFS_FIXTURES:-/var/cache/layerfs-fixtures}"

demo: build
	@bash scripts/demo.sh

test: build
	@$(MAKE) -s system-deps EXTRA_APT="$(FIXTURE_PACKAGES)"
	@node --test --test-concurrency=1 --test-timeout=1200000 $$(find dist/test -name '*.test.js' | sort)

# BENCH_QUICK=1: a smaller set in a few minutes. Needs root (mounts, dropping the page cache).
BENCH_PACKAGES := fuse-overlayfs fio
bench: build
	@$(MAKE) -s system-deps EXTRA_APT="$(BENCH_PACKAGES)"
	@node dist/bench/bench.js

clean:
	rm -rf dist

# Not in CI: parallel workers doing random operations on one mount (SOAK_SECONDS, default 600).
soak: build
	@node dist/test/soak/soak.js
