"""Make the T5 parity fixtures in tests/fixtures/t5-tiny and tests/fixtures/t5-v1_1-tiny.

Two random tiny T5ForConditionalGeneration checkpoints, one of each layout:

- t5-tiny: the original T5 (ReLU feed-forward, output head tied to the shared embedding, so the
  decoder's output is scaled by d_model^-0.5 before it);
- t5-v1_1-tiny: T5 v1.1 (gated GELU feed-forward, an untied head without the scaling, more
  encoder than decoder layers).

transformers 5 always ties T5's head to the embedding and keeps only the scaling switch
(`scale_decoder_outputs`); the untied head of v1.1 checkpoints (`tie_word_embeddings: false` and
an `lm_head.weight` of its own) is set up here by hand, and that folder's config.json and weights
are written the way v1.1 checkpoints have them.

Both share a 160-entry SentencePiece-style Unigram tokenizer trained on the text below (<pad> 0,
</s> 1, <unk> 2, as T5's). Small bucket settings (8 buckets, max distance 20) make inputs of a
few dozen tokens reach the logarithmic buckets. Each folder gets reference.json:

- `batch`: two inputs of different lengths (each ending with </s>), padded on the right with an
  attention mask, and teacher-forced decoder inputs (<pad> first, padded on the right): the ids
  and the logits `[2, T, V]`;
- `greedy`: for each prompt, transformers' greedy `generate` (12 new tokens at most);
- `beam`: the same with 3 beams (length penalty 1, no early stopping), the best sequence;
- `buckets`: `_relative_position_bucket` for relative positions -300..300, bidirectional
  (encoder) and not (decoder), for this config's buckets and for T5's defaults (32, 128).

Everything is seeded, so rerunning reproduces the files.

    pip install torch transformers tokenizers
    python3 tests/scripts/make_t5_fixture.py
"""

import json
import os

import torch
from safetensors.torch import save_file
from tokenizers import SentencePieceUnigramTokenizer
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
BATCH = [
    "translate the river to the sea: the rain returns to the hills above the town",
    "hello world",
]
TARGETS = ["rivers run to the sea", "every program starts by greeting the world it runs in"]
PROMPTS = [
    "the quick brown fox jumps over the lazy dog",
    "a small model learns the shape of words",
    "numbers like 12 and 345",
]

TEXT = """
the quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire.
hello world, hello again: every program starts by greeting the world it runs in.
rivers run to the sea, and the sea returns the rain to the hills above the town.
a small model learns the shape of words before it learns what the words mean.
numbers like 12, 345 and 6789 sit between letters, commas, stops and questions?
the wind moved through the trees and the leaves answered with a quiet sound.
translate the river to the sea and the sea to the river.
""".strip().splitlines()


def rounded(rows):
    if isinstance(rows, list):
        return [rounded(r) for r in rows]
    return float(f"{rows:.7g}")


def tokenizer():
    tok = SentencePieceUnigramTokenizer()
    tok.train_from_iterator(
        TEXT,
        vocab_size=160,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        show_progress=False,
    )
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("</s>") == 1
    return tok


def encode(tok, text):
    return tok.encode(text).ids + [1]


def padded(rows):
    width = max(len(r) for r in rows)
    ids = [r + [0] * (width - len(r)) for r in rows]
    mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
    return ids, mask


def buckets(num_buckets, max_distance):
    rel = torch.arange(-300, 301)
    out = {}
    for name, bidirectional in [("bidirectional", True), ("causal", False)]:
        out[name] = T5Attention._relative_position_bucket(
            rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
        ).tolist()
    return out


def make(name, tok, untied=False, **config):
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    config = T5Config(
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        d_kv=8,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **config,
    )
    model = T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "layer_norm" in pname:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in pname:
                p.copy_(1.0 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    if untied:
        model.config.scale_decoder_outputs = False
        model.lm_head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)
        with torch.no_grad():
            model.lm_head.weight.copy_(0.05 * torch.randn_like(model.lm_head.weight))
        weights = {
            k: v.contiguous()
            for k, v in model.state_dict().items()
            if not k.endswith("embed_tokens.weight")
        }
        save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
        saved = model.config.to_dict()
        saved.pop("scale_decoder_outputs", None)
        saved["tie_word_embeddings"] = False
        saved["architectures"] = ["T5ForConditionalGeneration"]
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(saved, f, indent=2, sort_keys=True)
    else:
        model.save_pretrained(out, safe_serialization=True)
    tok.save(os.path.join(out, "tokenizer.json"))

    enc_ids, enc_mask = padded([encode(tok, t) for t in BATCH])
    dec_ids, _ = padded([[0] + tok.encode(t).ids for t in TARGETS])
    with torch.no_grad():
        logits = model(
            input_ids=torch.tensor(enc_ids),
            attention_mask=torch.tensor(enc_mask),
            decoder_input_ids=torch.tensor(dec_ids),
        ).logits
    greedy, beam = [], []
    for prompt in PROMPTS:
        ids = torch.tensor([encode(tok, prompt)])
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=12, do_sample=False, num_beams=1)
            b = model.generate(
                ids,
                max_new_tokens=12,
                do_sample=False,
                num_beams=3,
                length_penalty=1.0,
                early_stopping=False,
            )
        greedy.append({"prompt": prompt, "ids": ids[0].tolist(), "output": g[0].tolist()})
        beam.append({"prompt": prompt, "ids": ids[0].tolist(), "output": b[0].tolist()})
    reference = {
        "batch": {
            "texts": BATCH,
            "input_ids": enc_ids,
            "attention_mask": enc_mask,
            "decoder_input_ids": dec_ids,
            "logits": rounded(logits.tolist()),
        },
        "greedy": greedy,
        "beam": beam,
        "buckets": {
            "config": buckets(8, 20),
            "default": buckets(32, 128),
        },
    }
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump(reference, f)
    print(name, "logits", tuple(logits.shape), "greedy", [g["output"] for g in greedy])


def main():
    torch.manual_seed(0)
    tok = tokenizer()
    make("t5-tiny", tok, d_ff=48, num_layers=2, feed_forward_proj="relu", tie_word_embeddings=True)
    make(
        "t5-v1_1-tiny",
        tok,
        untied=True,
        d_ff=40,
        num_layers=3,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
    )


if __name__ == "__main__":
    main()
