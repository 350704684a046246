#!/usr/bin/env bash
# The test command of the README: installs what the integration tests need (the real
# iptables-nft, iptables-legacy and nft binaries are the other agents and the oracles),
# then runs every test. Run as root: each integration test makes its own network
# namespace and never touches the machine's own.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for bin in iptables-nft iptables-legacy nft strace setpriv systemd-analyze cc go valgrind; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing test dependencies (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq iptables nftables strace util-linux systemd gcc golang-go valgrind >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
    echo "the integration tests need root (they create network namespaces)" >&2
    exit 1
fi

# Figures the torture and crash tests measured are collected here and printed at the end.
figures=target/tmp/figures.txt
rm -f "$figures"
cargo test --locked --workspace "$@"
if [ -s "$figures" ]; then
    echo "== figures measured by the tests"
    cat "$figures"
fi
