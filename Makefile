# boxctl build. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
TOOLS := build/tools
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
FUZZTIME ?= 30s

PLUGINS := qemu:./plugins/qemu qcow2:./plugins/storage-qcow2 oci:./plugins/registry-oci libkrun:./plugins/libkrun
TEST_PLUGINS := procvmm:./test/plugins/procvmm badproto:./test/plugins/badproto
# Example plugins are Go modules of their own (importing only sdk); built
# into build/examples, tested with their own `go test`.
EXAMPLES := microvm:examples/vmm-microvm

.PHONY: all build build-test-plugins test bench lint proto clean help deps guest guest-generic demo fuzz containerd-sid

all: build

help:
	@echo "make build   build bin/boxctl, bin/containerd-shim-boxctl-v2 and every plugin as bin/boxctl-plugin-<name>, the examples into build/examples"
	@echo "make guest   build the guest kernel + initramfs into build/guest (Debian's cloud kernel)"
	@echo "make guest-generic  the same on Debian's generic kernel into build/guest-generic (9p, for host directory shares)"
	@echo "make demo    install what is needed, build everything and run uname -a in a real VM"
	@echo "make test    install test dependencies, then run every test with -race"
	@echo "make containerd-sid  fetch containerd 2.1 from Debian sid into build/containerd-sid (for the shim's tests)"
	@echo "make fuzz    a bounded fuzz run of the qcow2 parser (FUZZTIME, default 30s)"
	@echo "make bench   run the benchmarks under bench/ and print their numbers"
	@echo "make lint    gofmt check, go vet and staticcheck (pinned in go.mod)"
	@echo "make proto   regenerate the protobuf code"
	@echo "make clean   remove build output"

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/boxctl ./cmd/boxctl
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN)/containerd-shim-boxctl-v2 ./cmd/containerd-shim-boxctl-v2
	@set -e; for p in $(PLUGINS); do \
		name=$${p%%:*}; pkg=$${p#*:}; \
		if [ -n "$$(ls $$pkg/*.go 2>/dev/null)" ]; then \
			echo "$(GO) build -o $(BIN)/boxctl-plugin-$$name $$pkg"; \
			CGO_ENABLED=0 $(GO) build -o $(BIN)/boxctl-plugin-$$name $$pkg; \
		fi; \
	done
	@mkdir -p build/examples
	@set -e; for e in $(EXAMPLES); do \
		name=$${e%%:*}; dir=$${e#*:}; \
		echo "(cd $$dir && $(GO) build -o $(CURDIR)/build/examples/boxctl-plugin-$$name .)"; \
		(cd $$dir && CGO_ENABLED=0 $(GO) build -o $(CURDIR)/build/examples/boxctl-plugin-$$name .); \
	done

# Test plugins are test doubles; they are built next to the test binaries,
# never shipped in bin/.
build-test-plugins:
	@mkdir -p build/test-plugins
	@set -e; for p in $(TEST_PLUGINS); do \
		name=$${p%%:*}; pkg=$${p#*:}; \
		CGO_ENABLED=0 $(GO) build -o build/test-plugins/boxctl-plugin-$$name $$pkg; \
	done

deps:
	./scripts/install-deps.sh

guest:
	guest/build.sh

# A second guest on Debian's generic kernel: the cloud kernel of build/guest
# has no 9p, which host directory shares need (docs/volumes.md). The e2e
# share tests boot it.
guest-generic:
	KERNEL_PKG=linux-image-amd64 OUT=build/guest-generic guest/build.sh

demo: deps build guest
	./scripts/demo.sh

# containerd 2.1 from Debian sid, unpacked (not installed) for the shim's
# tests; bookworm's containerd 1.6 comes from scripts/install-deps.sh.
containerd-sid:
	./scripts/fetch-containerd-sid.sh

test: deps build build-test-plugins guest guest-generic containerd-sid
	$(GO) test -race -count=1 -timeout 30m ./...
	@set -e; for e in $(EXAMPLES); do \
		dir=$${e#*:}; \
		echo "(cd $$dir && $(GO) test -race -count=1 -timeout 20m ./...)"; \
		(cd $$dir && $(GO) test -race -count=1 -timeout 20m ./...); \
	done
	cd clients/typescript && npm ci --no-audit --no-fund && npm test

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime $(FUZZTIME) ./plugins/storage-qcow2/qcow2/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@set -e; for e in $(EXAMPLES); do (cd $${e#*:} && $(GO) vet ./...); done

$(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc: go.mod
	@mkdir -p $(TOOLS)
	$(GO) build -o $(TOOLS)/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc

# Generated code is committed. protoc is Debian bookworm's (3.21.12); the
# generators are the versions pinned in go.mod, so regeneration is reproducible.
proto: $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	protoc -I . \
		--plugin=protoc-gen-go=$(TOOLS)/protoc-gen-go --plugin=protoc-gen-go-grpc=$(TOOLS)/protoc-gen-go-grpc \
		--go_out=. --go_opt=module=github.com/boxctl/boxctl \
		--go-grpc_out=. --go-grpc_opt=module=github.com/boxctl/boxctl \
		sdk/proto/v1/*.proto core/state/statepb/*.proto
	@if [ -x guest/proto/gen.sh ]; then guest/proto/gen.sh; fi

# Each benchmark prints its numbers; see bench/README.md for what they mean.
bench: deps build build-test-plugins guest
	$(GO) run ./bench/foundation -bin $(BIN) -test-plugins build/test-plugins
	$(GO) run ./bench/cli -bin $(BIN) -test-plugins build/test-plugins
	$(GO) run ./bench/rpc -test-plugins build/test-plugins
	$(GO) run ./bench/vm -bin $(BIN) -guest build/guest
	$(GO) run ./bench/coldboot -bin $(BIN) -guest build/guest
	$(GO) run ./bench/memsnap -bin $(BIN) -guest build/guest
	$(GO) run ./bench/snapshot -bin $(BIN) -guest build/guest
	$(GO) run ./bench/diskswitch -bin $(BIN) -guest build/guest
	$(GO) run ./bench/commit -bin $(BIN) -guest build/guest
	$(GO) run ./bench/storage -plugin $(BIN)/boxctl-plugin-qcow2
	$(GO) run ./bench/qcow2
	$(GO) run ./bench/rootfs
	$(GO) run ./bench/archive -bin $(BIN) -test-plugins build/test-plugins
	$(GO) run ./bench/api -bin $(BIN) -test-plugins build/test-plugins -guest build/guest

clean:
	rm -rf $(BIN) build
