"""Make the LLaMA parity fixture in tests/fixtures/llama-tiny.

A random tiny LlamaForCausalLM with grouped-query attention (2 layers, width 32, 4 query heads,
2 key/value heads, untied head, rotary base 10000), saved the way Hugging Face saves it, with the
byte-level BPE of the GPT-2 fixture, plus reference.json: for fixed prompts, the token ids,
transformers' float32 logits and its greedy continuation. Seeded, so rerunning reproduces it.

    pip install torch transformers
    python3 tests/scripts/make_llama_fixture.py
"""

import json
import os
import shutil

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from tokenizers import Tokenizer

HERE = os.path.dirname(__file__)
OUT = os.path.join(HERE, "..", "fixtures", "llama-tiny")
TOKENIZER = os.path.join(HERE, "..", "fixtures", "gpt2-tiny", "tokenizer.json")
PROMPTS = ["the quick brown fox", "rivers run to the sea, and the sea returns the rain"]
NEW_TOKENS = 24


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer.from_file(TOKENIZER)
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    model.save_pretrained(OUT, safe_serialization=True)
    gen_config = os.path.join(OUT, "generation_config.json")
    if os.path.exists(gen_config):
        os.remove(gen_config)
    shutil.copy(TOKENIZER, os.path.join(OUT, "tokenizer.json"))

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
                pad_token_id=0,
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
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"prompts": prompts}, f)
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
