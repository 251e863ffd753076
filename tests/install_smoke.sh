#!/usr/bin/env bash
# Installs the build into a scratch prefix and builds an example the way a user does:
#   cc app.c $(pkg-config --cflags --libs ura)
set -euo pipefail
build=$1 src=$2
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
meson install -C "$build" --destdir "$dest" >/dev/null
pc=$(dirname "$(find "$dest" -name ura.pc | head -n1)")
prefix=$(find "$dest" -name ura.h -path '*include*' | head -n1 | xargs dirname | xargs dirname)
export PKG_CONFIG_PATH=$pc
export PKG_CONFIG_SYSROOT_DIR=$dest
cc -o "$dest/timer" "$src/examples/timer.c" $(pkg-config --cflags --libs ura)
LD_LIBRARY_PATH=$(dirname "$(find "$dest" -name 'libura.so' | head -n1)") "$dest/timer" | grep -q 'timer fired: -62'
# Only ura_* is exported.
if nm -D --defined-only "$(find "$dest" -name 'libura.so' | head -n1)" | awk '$2=="T"{print $3}' | grep -v '^ura_'; then
  echo "non-ura symbols exported" >&2
  exit 1
fi
echo "install smoke test: ok"
