#!/usr/bin/env bash
# Writes fuzz/seeds/run_folder/tiny-run: a real run folder of `cinder train` (a one-layer GPT
# after one step) packed as the run-folder target reads it: for each file of RUN_FILES in
# fuzz/src/lib.rs, a little-endian u32 length and the bytes. CINDER=path/to/cinder uses a built
# binary instead of `cargo run`.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'line %s of the little corpus.\n' $(seq 1 200) > "$work/corpus.txt"
${CINDER:-cargo run -q -p cinder --} train --corpus "$work/corpus.txt" --n-layer 1 --n-embd 16 --n-head 2 \
  --context 8 --batch-size 2 --steps 1 --checkpoint-every 1 --eval-every 0 --sample-every 0 \
  --device cpu --quiet --out "$work/run" >/dev/null 2>&1
python3 - "$work/run" fuzz/seeds/run_folder/tiny-run <<'PY'
import struct, sys
run, out = sys.argv[1], sys.argv[2]
ckpt = "checkpoints/step-0000001/"
names = ["run.json", "metrics.jsonl", "latest"] + [ckpt + n for n in [
    "config.json", "tokenizer.json", "trainer_state.json", "train_config.json",
    "model.safetensors", "optimizer.safetensors"]]
with open(out, "wb") as f:
    for name in names:
        data = open(f"{run}/{name}", "rb").read()
        f.write(struct.pack("<I", len(data)) + data)
PY
ls -l fuzz/seeds/run_folder/tiny-run
