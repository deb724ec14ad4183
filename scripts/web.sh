#!/usr/bin/env bash
# Builds the browser version of Cinder into out/web/site and, with `serve`, serves it on
# 127.0.0.1. Installs what it needs when missing: the wasm32 target, wasm-bindgen-cli at the
# version Cargo.lock pins, the Tang poems (fetched as `cinder data fetch tang` does) and
# SmolLM2-135M-Instruct's 4-bit GGUF for the chat view (fetched as `cinder fetch smollm2` does).
#
#   ./scripts/web.sh build          build the site
#   ./scripts/web.sh serve [PORT]   build, then serve it on http://127.0.0.1:PORT (8080)
#
# wasm-opt (Debian's binaryen) shrinks the wasm when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cinder-target}"
site=out/web/site
SMOLLM2=SmolLM2-135M-Instruct.Q4_1.gguf

say() { echo "==> $*" >&2; }

tools() {
  if ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  local want
  want=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
    say "installing wasm-bindgen-cli $want (the version Cargo.lock pins)"
    # No --locked: the tool's own lock can name crate releases the registry has withdrawn.
    cargo install --quiet wasm-bindgen-cli --version "=$want"
  fi
}

corpus() {
  if [ ! -s cache/tang/train.txt ] || [ ! -s cache/tang/val.txt ]; then
    say "fetching the Tang poems"
    cargo run --quiet -p cinder -- data fetch tang
  fi
}

smollm2() {
  if [ ! -s "cache/models/$SMOLLM2" ]; then
    say "fetching SmolLM2-135M-Instruct"
    cargo run --quiet -p cinder -- fetch smollm2
  fi
}

build() {
  tools
  corpus
  smollm2
  say "building the page (wasm32-unknown-unknown, release)"
  cargo rustc --quiet -p cinder --lib --release --target wasm32-unknown-unknown --crate-type cdylib
  local wasm="$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/cinder.wasm"
  rm -rf "$site"
  mkdir -p "$site/pkg" "$site/data/models"
  wasm-bindgen --target web --no-typescript --out-dir "$site/pkg" "$wasm"
  if command -v wasm-opt >/dev/null; then
    say "shrinking with $(wasm-opt --version)"
    wasm-opt -O2 --all-features "$site/pkg/cinder_bg.wasm" -o "$site/pkg/cinder_bg.opt.wasm" \
      && mv "$site/pkg/cinder_bg.opt.wasm" "$site/pkg/cinder_bg.wasm" \
      || say "wasm-opt failed; keeping the unoptimised wasm"
  fi
  cp web/index.html "$site/"
  cp assets/icon.png assets/fonts/cinder-cjk.ttf "$site/data/"
  gzip -9 -c cache/tang/train.txt >"$site/data/tang-train.txt.gz"
  gzip -9 -c cache/tang/val.txt >"$site/data/tang-val.txt.gz"
  ln -f "cache/models/$SMOLLM2" "$site/data/models/" 2>/dev/null || cp "cache/models/$SMOLLM2" "$site/data/models/"
  local wasm_gz site_gz
  wasm_gz=$(gzip -9 -c "$site/pkg/cinder_bg.wasm" | wc -c)
  site_gz=$(find "$site" -type f -exec gzip -9 -c {} \; | wc -c)
  say "site in $site: wasm $(du -b "$site/pkg/cinder_bg.wasm" | cut -f1) bytes ($wasm_gz gzipped); whole site $(du -sb "$site" | cut -f1) bytes ($site_gz gzipped)"
}

case "${1:-build}" in
  build) build ;;
  serve)
    build
    port="${2:-8080}"
    say "serving http://127.0.0.1:$port/ (Ctrl+C stops)"
    exec python3 -m http.server "$port" --bind 127.0.0.1 --directory "$site"
    ;;
  *) echo "usage: $0 build | serve [PORT]" >&2; exit 2 ;;
esac
