"""Record transformers' greedy answers of SmolLM2-135M-Instruct, read from the same GGUF file
Cinder uses (dequantized to float32 by transformers), into tests/fixtures/smollm2-greedy.json.
Only token ids are committed, never weights.

    pip install torch transformers gguf
    python3 tests/scripts/make_smollm2_reference.py path/to/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "smollm2-greedy.json")
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
]
NEW_TOKENS = 40


def main():
    path = os.path.abspath(sys.argv[1])
    folder, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    cases = []
    for prompt in PROMPTS:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, len(ids):].tolist()
        cases.append({"prompt": prompt, "prompt_ids": ids, "greedy_new_ids": new,
                      "greedy_text": tok.decode(new, skip_special_tokens=True)})
        print(prompt, "->", repr(cases[-1]["greedy_text"]))
    with open(OUT, "w") as f:
        json.dump({"new_tokens": NEW_TOKENS, "cases": cases}, f, indent=1, ensure_ascii=False)
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
