#!/usr/bin/env bash
# Fuzzes Cinder's readers of user-supplied files under libFuzzer (cargo-fuzz, nightly):
#
#   scripts/fuzz.sh [RUNS] [TARGET...]     e.g. scripts/fuzz.sh 1000000 gguf tokenizer
#
# RUNS executions per target (default 1,000,000), every target of fuzz/fuzz_targets by default.
# Each run starts from the committed seeds (fuzz/seeds) and the test fixtures, under
# -rss_limit_mb=2048, and the targets' own allocator refuses any single allocation over 256 MiB.
# FUZZ_SECONDS=N also stops each target after N seconds (libFuzzer's -max_total_time).
# FUZZ_SANITIZER=address adds AddressSanitizer (about 2-3x slower; the default, none, relies on
# Rust's own checks, debug assertions included).
# A finding is saved under fuzz/artifacts/TARGET/; once fixed, keep it in
# fuzz/regressions/TARGET/ (the test suite runs every regression input and every seed). The test suite itself runs the same targets
# over the seeds and their mutations on the stable toolchain (tests/tests/fuzz_targets.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-1000000}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(gguf safetensors config tokenizer chat_template run_folder metrics)
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
# The fuzz crate resolves against the main lock file, so it builds the same versions.
cp Cargo.lock fuzz/Cargo.lock

fixtures=tests/fixtures
for target in "${targets[@]}"; do
  corpus="fuzz/corpus/$target"
  mkdir -p "$corpus"
  for kept in seeds regressions; do
    [ -d "fuzz/$kept/$target" ] && cp -n fuzz/"$kept"/"$target"/* "$corpus"/ 2>/dev/null || true
  done
  i=0
  for family in gpt2-tiny llama-tiny gpt2-ml-tiny t5-tiny bert-tiny; do
    case "$target" in
      safetensors) { printf "\\x$(printf %02x $i)"; cat "$fixtures/$family/model.safetensors"; } > "$corpus/seed-$family" ;;
      config) { printf "\\x$(printf %02x $i)"; cat "$fixtures/$family/config.json"; } > "$corpus/seed-$family" ;;
      tokenizer) cp "$fixtures/$family/tokenizer.json" "$corpus/seed-$family" ;;
    esac
    i=$((i + 1))
  done
  if [ "$target" = gguf ]; then cp "$fixtures"/llama-tiny-*.gguf "$corpus"/; fi
  echo "==> fuzzing $target for $runs runs"
  start=$(date +%s)
  cargo +nightly fuzz run --release --debug-assertions --sanitizer "${FUZZ_SANITIZER:-none}" \
    "$target" "$corpus" -- \
    -runs="$runs" -max_total_time="${FUZZ_SECONDS:-0}" -rss_limit_mb=2048 -timeout=30 -max_len=262144 -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+ +DONE|stat::|==[0-9]+==|SUMMARY|Done)|panicked|memory allocation" || true
  echo "$target: $(( $(date +%s) - start )) s"
  if ls "fuzz/artifacts/$target"/crash-* "fuzz/artifacts/$target"/oom-* >/dev/null 2>&1; then
    echo "fuzz.sh: findings in fuzz/artifacts/$target" >&2
    exit 1
  fi
done
