"""Make the GPT2_ML parity fixture in tests/fixtures/gpt2-ml-tiny.

No transformers class has GPT2_ML's layout, so the reference is a PyTorch transcription of
bert4keras' `GPT2_ML` (bert4keras/models.py: apply_embeddings, apply_main_layers,
apply_final_layers), written here layer by layer:

    x = LayerNorm(token_embedding + position_embedding)          # Embedding-Norm
    per block:
        x = x + Dense(MultiHeadAttention(x, causal mask))         # attention, then Add
        y = FeedForward(LayerNorm_0(x))                           # Dense -> gelu -> Dense
        x = LayerNorm_1(x + y)                                    # the residual skips LayerNorm_0
    logits = x @ token_embedding.T                                # tied, no bias, no final norm

with bert4keras' exact (erf) GELU and LayerNorm epsilon 1e-5. A random tiny model (2 blocks,
width 32, 4 heads, feed-forward 96) with a character vocabulary is saved under the names of the
original TensorFlow checkpoint (`newslm/layer00/query_layer/kernel`, kernels `[in, out]`), plus
reference.json: for fixed prompts, the token ids, the float32 logits and the greedy
continuation. Seeded, so rerunning reproduces the files.

    pip install torch tokenizers safetensors
    python3 tests/scripts/make_gpt2_ml_fixture.py
"""

import json
import math
import os

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "gpt2-ml-tiny")
PROMPTS = ["白日依山尽", "床前明月光，疑是"]
NEW_TOKENS = 16
TEXT = "白日依山尽，黄河入海流。欲穷千里目，更上一层楼。床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 96,
    "max_position_embeddings": 32,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "model_type": "gpt2-ml",
    "architectures": ["Gpt2MlLMHeadModel"],
}


def char_tokenizer():
    """A character-level tokenizer in the layout Cinder's `char` tokenizer writes."""
    chars = sorted(set(TEXT), key=lambda c: (-TEXT.count(c), c))
    vocab = {"<|endoftext|>": 0, "<unk>": 1}
    for i, c in enumerate(chars):
        vocab[c] = i + 2
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    return tok


def layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gamma + beta


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def forward(w, ids, c):
    """bert4keras' GPT2_ML on a `[T]` sequence of ids; returns `[T, V]` logits."""
    t = len(ids)
    heads, width = c["num_attention_heads"], c["hidden_size"]
    d = width // heads
    eps = c["layer_norm_eps"]
    emb = "newslm/embeddings/"
    x = w[emb + "word_embed"][ids] + w[emb + "pos_embed"][:t]
    x = layer_norm(x, w[emb + "LayerNorm_embed_norm/gamma"], w[emb + "LayerNorm_embed_norm/beta"], eps)
    mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    for i in range(c["num_hidden_layers"]):
        p = f"newslm/layer{i:02d}/"
        dense = lambda name, v: v @ w[p + name + "/kernel"] + w[p + name + "/bias"]
        split = lambda v: v.reshape(t, heads, d).transpose(0, 1)  # [H, T, D]
        q, k, v = (split(dense(n, x)) for n in ("query_layer", "key_layer", "value_layer"))
        scores = q @ k.transpose(1, 2) / math.sqrt(d)
        probs = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
        a = (probs @ v).transpose(0, 1).reshape(t, width)
        x = x + dense("context_projection_layer", a)
        y = layer_norm(x, w[p + "LayerNorm_mlp_ln0/gamma"], w[p + "LayerNorm_mlp_ln0/beta"], eps)
        y = dense("output", gelu(dense("intermediate", y)))
        x = layer_norm(x + y, w[p + "LayerNorm_mlp_ln1/gamma"], w[p + "LayerNorm_mlp_ln1/beta"], eps)
    return x @ w[emb + "word_embed"].T


def main():
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    tok = char_tokenizer()
    c = dict(CONFIG, vocab_size=tok.get_vocab_size())
    width, inner = c["hidden_size"], c["intermediate_size"]
    w = {
        "newslm/embeddings/word_embed": 0.3 * torch.randn(c["vocab_size"], width),
        "newslm/embeddings/pos_embed": 0.3 * torch.randn(c["max_position_embeddings"], width),
        "newslm/embeddings/LayerNorm_embed_norm/gamma": 1.0 + 0.2 * torch.randn(width),
        "newslm/embeddings/LayerNorm_embed_norm/beta": 0.1 * torch.randn(width),
    }
    shapes = {
        "query_layer": (width, width),
        "key_layer": (width, width),
        "value_layer": (width, width),
        "context_projection_layer": (width, width),
        "intermediate": (width, inner),
        "output": (inner, width),
    }
    for i in range(c["num_hidden_layers"]):
        p = f"newslm/layer{i:02d}/"
        for name, (n_in, n_out) in shapes.items():
            w[p + name + "/kernel"] = 0.3 * torch.randn(n_in, n_out)
            w[p + name + "/bias"] = 0.1 * torch.randn(n_out)
        for norm in ("LayerNorm_mlp_ln0", "LayerNorm_mlp_ln1"):
            w[p + norm + "/gamma"] = 1.0 + 0.2 * torch.randn(width)
            w[p + norm + "/beta"] = 0.1 * torch.randn(width)
    save_file({k: v.contiguous() for k, v in w.items()}, os.path.join(OUT, "model.safetensors"))
    with open(os.path.join(OUT, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    tok.save(os.path.join(OUT, "tokenizer.json"))

    prompts = []
    with torch.no_grad():
        for text in PROMPTS:
            ids = tok.encode(text).ids
            logits = forward(w, ids, c)
            seq = list(ids)
            for _ in range(NEW_TOKENS):
                seq.append(int(forward(w, seq, c)[-1].argmax()))
            new = seq[len(ids):]
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
        json.dump({"prompts": prompts}, f, ensure_ascii=False)
    print("wrote", os.path.abspath(OUT))


if __name__ == "__main__":
    main()
