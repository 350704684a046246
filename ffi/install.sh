#!/usr/bin/env bash
# Installs the jumpset C library where the compiler, the dynamic linker and pkg-config
# find it:
#
#   LIBDIR/libjumpset.so.MAJOR.MINOR   the shared library (SONAME libjumpset.so.MAJOR)
#   LIBDIR/libjumpset.so.MAJOR         -> libjumpset.so.MAJOR.MINOR (what programs load)
#   LIBDIR/libjumpset.so               -> libjumpset.so.MAJOR      (what -ljumpset finds)
#   LIBDIR/libjumpset.a                the static library
#   LIBDIR/pkgconfig/jumpset.pc        `pkg-config --cflags --libs jumpset`
#   PREFIX/include/jumpset.h           the header
#
# Usage: ffi/install.sh [PREFIX [DESTDIR]]     (PREFIX defaults to /usr/local)
#
#   DESTDIR    stage the files under DESTDIR (packaging); paths inside the .pc stay PREFIX's.
#   LIBDIR     (environment) the library folder, default PREFIX/lib.
#   JUMPSET_LIB_DIR (environment) take libjumpset.so/.a from this folder instead of
#              building them with `cargo build --release --locked -p jumpset-ffi`.
#   LDCONFIG   (environment) the command run after a real install (no DESTDIR) as root so
#              the dynamic linker finds the new library; default `ldconfig`, empty: none.
#
# MAJOR.MINOR are JUMPSET_ABI_MAJOR and JUMPSET_ABI_MINOR of ffi/include/jumpset.h.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")

prefix=${1:-/usr/local}
destdir=${2:-}
case "$prefix" in
    /*) ;;
    *) echo "install.sh: PREFIX must be an absolute path, not $prefix" >&2; exit 2 ;;
esac
libdir=${LIBDIR:-$prefix/lib}
includedir=$prefix/include

abi() {
    local v
    v=$(sed -n "s/^#define JUMPSET_ABI_$1 \([0-9]*\)$/\1/p" "$here/include/jumpset.h")
    [ -n "$v" ] || { echo "install.sh: JUMPSET_ABI_$1 not in ffi/include/jumpset.h" >&2; exit 1; }
    echo "$v"
}
major=$(abi MAJOR)
minor=$(abi MINOR)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)

if [ -n "${JUMPSET_LIB_DIR:-}" ]; then
    built=$JUMPSET_LIB_DIR
else
    (cd "$root" && cargo build --release --locked -p jumpset-ffi)
    built=$root/target/release
fi
for f in libjumpset.so libjumpset.a; do
    [ -f "$built/$f" ] || { echo "install.sh: $built/$f is missing" >&2; exit 1; }
done

real=libjumpset.so.$major.$minor
install -d "$destdir$libdir/pkgconfig" "$destdir$includedir"
install -m 0755 "$built/libjumpset.so" "$destdir$libdir/$real"
ln -sfn "$real" "$destdir$libdir/libjumpset.so.$major"
ln -sfn "libjumpset.so.$major" "$destdir$libdir/libjumpset.so"
install -m 0644 "$built/libjumpset.a" "$destdir$libdir/libjumpset.a"
install -m 0644 "$here/include/jumpset.h" "$destdir$includedir/jumpset.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" \
    -e "s|@VERSION@|$version|" -e "s|@ABI@|$major.$minor|" \
    "$here/jumpset.pc.in" >"$destdir$libdir/pkgconfig/jumpset.pc"
chmod 0644 "$destdir$libdir/pkgconfig/jumpset.pc"

ldconfig_cmd=${LDCONFIG-ldconfig}
if [ -z "$destdir" ] && [ -n "$ldconfig_cmd" ] && [ "$(id -u)" = 0 ]; then
    "$ldconfig_cmd"
fi
echo "installed libjumpset $version (ABI $major.$minor) into $destdir$prefix"
