# boxctl build. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
TOOLS := build/tools

PLUGINS := qemu:./plugins/qemu qcow2:./plugins/storage-qcow2 oci:./plugins/registry-oci libkrun:./plugins/libkrun
TEST_PLUGINS := procvmm:./test/plugins/procvmm badproto:./test/plugins/badproto

.PHONY: all build test test-unit bench lint proto clean help deps

all: build

help:
	@echo "make build   build bin/boxctl and every plugin as bin/boxctl-plugin-<name>"
	@echo "make test    install test dependencies, then run every test with -race"
	@echo "make bench   run the benchmarks under bench/ and print their numbers"
	@echo "make lint    gofmt check and go vet"
	@echo "make proto   regenerate the protobuf code"
	@echo "make clean   remove build output"

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/boxctl ./cmd/boxctl
	@set -e; for p in $(PLUGINS); do \
		name=$${p%%:*}; pkg=$${p#*:}; \
		if [ -n "$$(ls $$pkg/*.go 2>/dev/null)" ]; then \
			echo "$(GO) build -o $(BIN)/boxctl-plugin-$$name $$pkg"; \
			CGO_ENABLED=0 $(GO) build -o $(BIN)/boxctl-plugin-$$name $$pkg; \
		fi; \
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

test: deps build build-test-plugins
	$(GO) test -race -count=1 -timeout 30m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

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

bench: build
	@echo "see bench/README.md"

clean:
	rm -rf $(BIN) build
