#!/usr/bin/env bash
# Regenerates the Go code for the guest agent protocol (guest/proto/agentv1).
# Reproducible: the protoc plugins are built from the versions pinned in go.mod (tool
# directives) and the generated files carry no absolute paths. Called by `make proto`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tools="$root/build/tools"
mkdir -p "$tools"

(cd "$root" && go build -o "$tools/" \
	google.golang.org/protobuf/cmd/protoc-gen-go \
	google.golang.org/grpc/cmd/protoc-gen-go-grpc)

command -v protoc >/dev/null || { echo "gen.sh: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }

cd "$root/guest/proto"
PATH="$tools:$PATH" protoc \
	--proto_path=. \
	--go_out=. --go_opt=paths=source_relative \
	--go-grpc_out=. --go-grpc_opt=paths=source_relative \
	agentv1/agent.proto
