#!/usr/bin/env bash
# The test command of the README: installs what the integration tests need (the real
# iptables-nft, iptables-legacy and nft binaries are the other agents and the oracles),
# then runs every test. Run as root: each integration test makes its own network
# namespace and never touches the machine's own.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for bin in iptables-nft iptables-legacy nft strace setpriv systemd-analyze cc go valgrind pkg-config readelf promtool flock curl; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test dependencies (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # prometheus: its promtool checks a live scrape of the daemon's /metrics.
    # curl: the README's local-API snippets are run against a daemon.
    apt-get install -y -qq iptables nftables strace util-linux systemd gcc golang-go valgrind \
        pkg-config binutils prometheus curl >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
    echo "the integration tests need root (they create network namespaces)" >&2
    exit 1
fi

# Figures the torture and crash tests measured are collected here and printed at the end.
figures=target/tmp/figures.txt
rm -f "$figures"
cargo test --locked --workspace "$@"

# The Go package (go/): its in-process transport links the C library through cgo and
# pkg-config, so the library is installed into a scratch prefix first, exactly as
# ffi/install.sh installs it for an operator. No Go module is fetched. Its socket
# transport is tested against the daemon `cargo test` built ($JUMPSET_BIN).
echo "== the Go package (go/)"
target=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --locked --quiet -p jumpset-ffi
prefix=$target/go-prefix
rm -rf "$prefix"
LDCONFIG='' JUMPSET_LIB_DIR=$target/debug ffi/install.sh "$prefix" >/dev/null
cargo build --locked --quiet --bin jumpset
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig LD_LIBRARY_PATH=$prefix/lib GOPROXY=off GOTOOLCHAIN=local
export JUMPSET_BIN=$target/debug/jumpset
unformatted=$(gofmt -l go ffi/examples/go)
if [ -n "$unformatted" ]; then
    echo "gofmt would change: $unformatted (run gofmt -w)" >&2
    exit 1
fi
(
    cd go
    go vet ./...
    go test -count=1 ./...
    CGO_ENABLED=0 go vet ./...
    CGO_ENABLED=0 go build ./...
    CGO_ENABLED=0 go test -count=1 ./...
)
if [ -s "$figures" ]; then
    echo "== figures measured by the tests"
    cat "$figures"
fi
