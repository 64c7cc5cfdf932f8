#!/usr/bin/env bash
# Builds a fully static xbackend-controller (glibc, +crt-static) for the
# machine's own architecture. The Dockerfile's build stage runs this script,
# and so does tests/deploy.rs, so what the image ships is what the test checks.
#   OUT   where to copy the binary (default target/static/xbackend-controller)
# Its own --target-dir: changed RUSTFLAGS would otherwise invalidate the
# shared debug build cache. Pure Rust TLS (rustls + ring): no OpenSSL to link.
set -euo pipefail
cd "$(dirname "$0")/.."

host=$(rustc -vV | sed -n 's/^host: //p')
case "$host" in
  *-linux-gnu) ;;
  *) echo "build-static.sh: expects a *-linux-gnu host, got $host" >&2; exit 2 ;;
esac
TARGET_DIR="${STATIC_TARGET_DIR:-target/static}"
OUT="${OUT:-$TARGET_DIR/xbackend-controller}"

# An explicit --target makes RUSTFLAGS apply to the binary only, not to build
# scripts and proc macros (which must stay dynamic to be loaded by rustc).
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --locked --target "$host" --target-dir "$TARGET_DIR" --bin xbackend-controller

mkdir -p "$(dirname "$OUT")"
if [[ "$TARGET_DIR/$host/release/xbackend-controller" -ef "$OUT" ]]; then exit 0; fi
cp "$TARGET_DIR/$host/release/xbackend-controller" "$OUT"
echo "built $OUT" >&2
