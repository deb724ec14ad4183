"""Check that Hugging Face transformers loads the checkpoints Cinder writes, and agrees with
Cinder on them. For each family with a transformers class (GPT-2, LLaMA, BERT, T5) it trains a small
run with the `cinder` binary, loads the run's latest checkpoint with transformers (the model
class from `config.json`, the tokenizer from `tokenizer.json`), and compares:

- GPT-2 and LLaMA: the greedy continuation of a prompt, `cinder generate --temperature 0`
  against `model.generate(do_sample=False)`, as text;
- BERT: the five likeliest tokens for a [MASK], `cinder fill-mask --json` against the argsort
  of transformers' masked-LM logits, and their probabilities;
- T5 (trained on JSONL pairs, each line's words reversed): the greedy answer to an input,
  `cinder generate --temperature 0` against `model.generate(do_sample=False)`, as text.

It prints one line per family and exits non-zero on any disagreement.

    pip install torch transformers
    python3 tests/scripts/check_transformers_loads.py path/to/cinder
"""

import json
import os
import subprocess
import sys
import tempfile

import torch
from transformers import (
    AutoModelForCausalLM,
    BertForMaskedLM,
    PreTrainedTokenizerFast,
    T5ForConditionalGeneration,
)

CORPUS = "".join(
    f"the {a} {v} the {o} at dawn, and line {i} ends here.\n"
    for i, (a, v, o) in enumerate(
        (a, v, o)
        for a in ("cat", "dog", "fox", "bird")
        for v in ("sees", "likes", "chases")
        for o in ("ball", "moon", "fish", "tree")
    )
) * 8


def cinder(binary, *args):
    out = subprocess.run([binary, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cinder {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout


def train(binary, work, family, extra=(), corpus="corpus.txt"):
    run = os.path.join(work, family)
    cinder(
        binary, "train", "--family", family, "--corpus", os.path.join(work, corpus),
        "--n-layer", "2", "--n-embd", "32", "--n-head", "4", "--context", "32",
        "--batch-size", "16", "--steps", "300", "--lr", "1e-2", "--sample-every", "0", "--eval-every", "0",
        "--device", "cpu", "--out", run, *extra,
    )
    latest = open(os.path.join(run, "latest")).read().strip()
    return run, os.path.join(run, latest)


def tokenizer(folder):
    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))


def check_causal(binary, work, family, extra=()):
    run, ckpt = train(binary, work, family, extra)
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = tokenizer(ckpt)
    prompt = "the fox chases"
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=16,
            eos_token_id=None, pad_token_id=0,
        )
    theirs = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    ours = cinder(
        binary, "generate", "--model", run, "--prompt", prompt, "--temperature", "0",
        "--max-new-tokens", "16", "--device", "cpu",
    ).rstrip("\n")
    same = ours == theirs
    print(f"{family}: transformers loaded {type(model).__name__} from {ckpt}; greedy "
          f"continuation {'equal' if same else 'DIFFERENT'}: {theirs!r}"
          + ("" if same else f" vs cinder {ours!r}"))
    return same


def check_bert(binary, work):
    run, ckpt = train(binary, work, "bert")
    model = BertForMaskedLM.from_pretrained(ckpt).eval()
    tok = tokenizer(ckpt)
    text = "the dog likes the [MASK]oon at dawn"
    ids = tok.encode(text)
    at = ids.index(tok.convert_tokens_to_ids("[MASK]"))
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0, at].softmax(-1)
    top = probs.argsort(descending=True)[:5].tolist()
    ours = json.loads(cinder(binary, "fill-mask", "--model", run, "--json", "--device", "cpu", text))
    ours_ids = [p["id"] for p in ours[0][0]]
    worst = max(abs(p["score"] - probs[p["id"]].item()) for p in ours[0][0])
    same = ours_ids == top and worst < 1e-5
    print(f"bert: transformers loaded {type(model).__name__} from {ckpt}; top-5 at the mask "
          f"{'equal' if same else 'DIFFERENT'} ({[tok.convert_ids_to_tokens(i) for i in top]}), "
          f"largest probability difference {worst:.1e}"
          + ("" if same else f"; cinder {ours_ids}"))
    return same


def check_t5(binary, work):
    with open(os.path.join(work, "pairs.jsonl"), "w") as f:
        for line in CORPUS.splitlines():
            f.write(json.dumps({"input": line, "target": " ".join(line.split()[::-1])}) + "\n")
    run, ckpt = train(binary, work, "t5", corpus="pairs.jsonl")
    model = T5ForConditionalGeneration.from_pretrained(ckpt).eval()
    tok = tokenizer(ckpt)
    prompt = "the fox chases the moon at dawn, and line 7 ends here."
    ids = torch.tensor([tok.encode(prompt) + [model.config.eos_token_id]])
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=24)
    theirs = tok.decode(out[0, 1:], skip_special_tokens=True)
    ours = cinder(
        binary, "generate", "--model", run, "--prompt", prompt, "--temperature", "0",
        "--max-new-tokens", "24", "--device", "cpu",
    ).rstrip("\n")
    same = ours == theirs
    print(f"t5: transformers loaded {type(model).__name__} from {ckpt}; greedy answer "
          f"{'equal' if same else 'DIFFERENT'}: {theirs!r}"
          + ("" if same else f" vs cinder {ours!r}"))
    return same


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as work:
        with open(os.path.join(work, "corpus.txt"), "w") as f:
            f.write(CORPUS)
        results = [
            check_causal(binary, work, "gpt2"),
            check_causal(binary, work, "llama", ("--n-kv-head", "2")),
            check_bert(binary, work),
            check_t5(binary, work),
        ]
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
