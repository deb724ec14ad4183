#!/usr/bin/env bash
# Opens the real desktop window under Xvfb (rendered by wgpu on the Vulkan software renderer),
# starts a small training run through the UI with its keyboard shortcut (Ctrl+Enter, sent by
# xdotool as X key events), waits for the steps to reach the run's metrics file, and saves
# screenshots of the Train and Chat views in out/gui/. Exits non-zero if anything fails.
#
# Usage: scripts/gui_smoke.sh [path/to/cinder]
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${1:-${CARGO_TARGET_DIR:-target}/debug/cinder}"
out=out/gui
mkdir -p "$out"
work="$(mktemp -d)"
app_pid=""
xvfb_pid=""
cleanup() {
  [ -n "$app_pid" ] && kill "$app_pid" 2>/dev/null || true
  [ -n "$xvfb_pid" ] && kill "$xvfb_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "gui smoke test failed: $*" >&2
  echo "--- app output ---" >&2
  cat "$work/app.log" >&2 || true
  exit 1
}

# A free display number.
n=90
while [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ]; do n=$((n + 1)); done
Xvfb ":$n" -screen 0 1280x800x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
xvfb_pid=$!
export DISPLAY=":$n"
unset WAYLAND_DISPLAY
for _ in $(seq 50); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done
xdpyinfo >/dev/null 2>&1 || fail "Xvfb did not start"

# Settings go to a throwaway folder; the corpus is a generated text file.
export XDG_DATA_HOME="$work/data" XDG_CONFIG_HOME="$work/config"
for i in $(seq 600); do echo "line $i: the quick brown fox jumps over the lazy dog $((i % 17))"; done >"$work/corpus.txt"

"$bin" --cache-dir "$work/cache" gui --fresh --view train --corpus "$work/corpus.txt" \
  --preset tiny --steps 60 --sample-every 10 --out "$work/run" >"$work/app.log" 2>&1 &
app_pid=$!

win=""
for _ in $(seq 600); do
  win="$(xdotool search --name '^Cinder$' 2>/dev/null | head -n1 || true)"
  [ -n "$win" ] && break
  kill -0 "$app_pid" 2>/dev/null || fail "the app exited before its window appeared"
  sleep 0.1
done
[ -n "$win" ] || fail "no window titled Cinder appeared within 60 s"
sleep 2
xdotool windowfocus --sync "$win"
xdotool mousemove --window "$win" 640 400
xdotool key --window "$win" ctrl+Return

metrics="$work/run/metrics.jsonl"
for _ in $(seq 1200); do
  [ -f "$metrics" ] && [ "$(wc -l <"$metrics")" -ge 30 ] && break
  kill -0 "$app_pid" 2>/dev/null || fail "the app exited during training"
  sleep 0.1
done
[ -f "$metrics" ] && [ "$(wc -l <"$metrics")" -ge 30 ] || fail "fewer than 30 training steps in 120 s"
grep -q '"sample"' "$metrics" || fail "no sample in the metrics"
sleep 1.5
import -window root "$out/train.png"
# The app's own picture of itself (Ctrl+Shift+S) lands in the run folder.
xdotool key --window "$win" ctrl+shift+s
picture=""
for _ in $(seq 100); do
  picture="$(ls "$work/run"/picture-step-*.png 2>/dev/null | head -n1 || true)"
  [ -n "$picture" ] && break
  sleep 0.1
done
[ -n "$picture" ] || fail "Ctrl+Shift+S wrote no picture-step-N.png into the run folder within 10 s"
cp "$picture" "$out/train-picture.png"
colors="$(identify -format '%k' "$out/train-picture.png")"
[ "$colors" -ge 50 ] || fail "the app's picture has only $colors colours (blank?)"
xdotool key --window "$win" ctrl+2
sleep 1
import -window root "$out/chat.png"

colors="$(identify -format '%k' "$out/train.png")"
[ "$colors" -ge 50 ] || fail "the Train screenshot has only $colors colours (blank window?)"
kill -0 "$app_pid" 2>/dev/null || fail "the app died"
kill "$app_pid"
wait "$app_pid" 2>/dev/null || true
app_pid=""
echo "gui window: $(wc -l <"$metrics") steps trained from the UI; screenshots $out/train.png ($colors colours), $out/chat.png"
