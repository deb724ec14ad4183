#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what it needs when missing: the Vulkan software
# renderer (Mesa lavapipe) for the wgpu tests and the wasm32 target for the browser build check.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  echo "==> installing the Vulkan software renderer (mesa-vulkan-drivers, libvulkan1)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
fi
if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null \
  || ! command -v import >/dev/null || ! command -v xdpyinfo >/dev/null; then
  echo "==> installing Xvfb, xdotool, ImageMagick and x11-utils for the desktop-window test"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool imagemagick x11-utils >/dev/null
fi
if ! rustup target list --installed | grep -q '^wasm32-unknown-unknown$'; then
  echo "==> adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown
fi

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/cinder-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> formatting"
cargo fmt --all --check

echo "==> engine and models compile for the browser (wasm32-unknown-unknown)"
cargo check --quiet -p cinder-engine -p cinder-models --target wasm32-unknown-unknown

echo "==> tests (CPU backend, plus the wgpu tests on $(ls /usr/share/vulkan/icd.d/ | tr '\n' ' '))"
log="$(mktemp)"
status=0
cargo test --workspace --all-targets --no-fail-fast -- --test-threads=1 2>&1 | tee "$log" || status=$?

echo "==> the desktop window under Xvfb: a training run started from the UI, screenshots in out/gui/"
# The binary `cargo test --all-targets` built (same features; building `-p cinder` alone would
# unify features differently and rebuild the whole GPU stack).
cargo build --quiet --workspace --all-targets
if scripts/gui_smoke.sh "${CARGO_TARGET_DIR:-target}/debug/cinder" 2>&1 | tee -a "$log"; then
  echo "gui window: 1 passed" >>"$log"
else
  echo "gui window: 1 failed" >>"$log"
  status=1
fi
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit "$status"
