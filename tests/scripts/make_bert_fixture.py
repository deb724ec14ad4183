"""Make the BERT parity fixture in tests/fixtures/bert-tiny.

A random tiny BertForMaskedLM (2 layers, width 32, 4 heads, feed-forward 64, 2 token types) with
a 200-entry lower-casing WordPiece vocabulary trained on the text below, saved the way Hugging
Face saves it, plus reference.json:

- `batch`: two sentences of different lengths encoded together, padded on the right with an
  attention mask, as transformers' tokenizer pads them: the ids, the mask, the encoder's last
  hidden states `[2, T, 32]` and the masked-LM logits `[2, T, V]`;
- `fill_mask`: a sentence with one [MASK], the ids, and the five best tokens at the mask with
  their probabilities (transformers' fill-mask pipeline).

Everything is seeded, so rerunning reproduces the files.

    pip install torch transformers tokenizers
    python3 tests/scripts/make_bert_fixture.py
"""

import json
import os

import torch
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast, pipeline

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "bert-tiny")
BATCH = ["The quick brown fox jumps over the lazy dog.", "Hello world!"]
FILL = "the cat sleeps by the warm [MASK]."

TEXT = """
the quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire.
hello world, hello again: every program starts by greeting the world it runs in.
rivers run to the sea, and the sea returns the rain to the hills above the town.
a small model learns the shape of words before it learns what the words mean.
numbers like 12, 345 and 6789 sit between letters, commas, stops and questions?
the wind moved through the trees and the leaves answered with a quiet sound.
""".strip().splitlines()


def rounded(rows):
    if isinstance(rows, list):
        return [rounded(r) for r in rows]
    return float(f"{rows:.7g}")


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(TEXT, vocab_size=200, min_frequency=1)
    wordpiece.save_model(OUT)  # vocab.txt, read back below by the fast tokenizer
    tok = BertTokenizerFast(os.path.join(OUT, "vocab.txt"), do_lower_case=True)
    os.remove(os.path.join(OUT, "vocab.txt"))
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(OUT, safe_serialization=True)
    tok.backend_tokenizer.save(os.path.join(OUT, "tokenizer.json"))

    enc = tok(BATCH, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    batch = {
        "texts": BATCH,
        "ids": enc["input_ids"].tolist(),
        "attention_mask": enc["attention_mask"].tolist(),
        "hidden": rounded(out.hidden_states[-1].tolist()),
        "logits": rounded(out.logits.tolist()),
    }
    fill = pipeline("fill-mask", model=model, tokenizer=tok, top_k=5)(FILL)
    fill_mask = {
        "text": FILL,
        "ids": tok(FILL)["input_ids"],
        "top": [{"token": p["token_str"], "id": p["token"], "score": rounded(p["score"])} for p in fill],
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"batch": batch, "fill_mask": fill_mask}, f)
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
