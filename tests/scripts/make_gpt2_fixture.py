"""Make the GPT-2 parity fixture in tests/fixtures/gpt2-tiny.

A random tiny GPT2LMHeadModel (2 layers, width 32, 4 heads, 320-entry byte-level BPE trained
on text written below), saved the way Hugging Face saves it, plus reference.json: for fixed
prompts, the token ids, transformers' float32 logits, its greedy continuation, and the causal-LM
loss of the first prompt. Everything is seeded, so rerunning reproduces the files.

    pip install torch transformers tokenizers safetensors
    python3 tests/scripts/make_gpt2_fixture.py
"""

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gpt2-tiny")
EOT = "<|endoftext|>"
PROMPTS = ["the quick brown fox", "hello world, hello"]
NEW_TOKENS = 24

TEXT = """
the quick brown fox jumps over the lazy dog while the cat sleeps by the warm fire.
hello world, hello again: every program starts by greeting the world it runs in.
rivers run to the sea, and the sea returns the rain to the hills above the town.
a small model learns the shape of words before it learns what the words mean.
numbers like 12, 345 and 6789 sit between letters, commas, stops and questions?
the wind moved through the trees and the leaves answered with a quiet sound.
""".strip().splitlines()


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        min_frequency=1,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TEXT * 20, trainer=trainer)
    return tok


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tok = build_tokenizer()
    eot = tok.token_to_id(EOT)
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=eot,
        eos_token_id=eot,
    )
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    model.save_pretrained(OUT, safe_serialization=True)
    gen_config = os.path.join(OUT, "generation_config.json")
    if os.path.exists(gen_config):
        os.remove(gen_config)
    tok.save(os.path.join(OUT, "tokenizer.json"))

    # Let the continuation run its full length: no stop at the end-of-text token.
    model.generation_config.eos_token_id = None
    prompts = []
    for text in PROMPTS:
        ids = tok.encode(text).ids
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            logits = model(input_ids).logits[0]
            out = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=eot,
            )
        new = out[0, len(ids):].tolist()
        prompts.append(
            {
                "text": text,
                "ids": ids,
                "logits": [[float(f"{v:.7g}") for v in row] for row in logits.tolist()],
                "greedy_new_ids": new,
                "greedy_text": tok.decode(new),
            }
        )
    with torch.no_grad():
        ids0 = torch.tensor([prompts[0]["ids"]])
        loss = model(ids0, labels=ids0).loss.item()
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"prompts": prompts, "loss": loss}, f)
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
