#!/usr/bin/env bash
# Regenerates the C header from ffi/src/lib.rs with cbindgen and compares it with the
# checked-in ffi/include/jumpset.h: a stale header fails (CI). With --write, updates it.
set -euo pipefail
cd "$(dirname "$0")"

# Pinned: another cbindgen version may lay the same API out differently.
want=0.29.4
if ! command -v cbindgen >/dev/null 2>&1 || [ "$(cbindgen --version)" != "cbindgen $want" ]; then
    echo "installing cbindgen $want"
    cargo install --locked --quiet cbindgen --version "$want"
fi

fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
cbindgen --quiet --config cbindgen.toml --crate jumpset-ffi --output "$fresh" .

if [ "${1:-}" = "--write" ]; then
    cp "$fresh" include/jumpset.h
    echo "wrote ffi/include/jumpset.h"
elif ! diff -u include/jumpset.h "$fresh"; then
    echo "ffi/include/jumpset.h is stale: run ffi/check-header.sh --write and commit it" >&2
    exit 1
else
    echo "ffi/include/jumpset.h is up to date"
fi
