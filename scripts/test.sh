#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what it needs when missing: the Vulkan software
# renderer (Mesa lavapipe) for the wgpu tests, Xvfb for the desktop window, and for the browser
# build the wasm32 target, wasm-bindgen-cli (scripts/web.sh), Debian's chromium and npm's
# playwright-core (web/package-lock.json).
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
if ! command -v chromium >/dev/null; then
  echo "==> installing Debian's chromium for the browser tests"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d web/node_modules/playwright-core ]; then
  echo "==> installing playwright-core (web/package-lock.json)"
  (cd web && npm ci --silent --no-audit --no-fund)
fi

export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/cinder-xdg-$(id -u)}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> formatting"
cargo fmt --all --check

echo "==> the browser build (scripts/web.sh build)"
./scripts/web.sh build

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
echo "==> the page in headless Chromium: training on WebGPU and on the CPU, chat; screenshots in out/web/"
if ! node web/tests/page.mjs out/web/site out/web "${CARGO_TARGET_DIR:-target}/debug/cinder" 2>&1 | tee -a "$log"; then
  status=1
fi
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s += $1} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s += $1} END {print s + 0}')
rm -f "$log"
echo "tests: $passed passed, $failed failed"
exit "$status"
