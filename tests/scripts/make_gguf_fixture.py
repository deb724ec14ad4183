"""Make tests/fixtures/llama-tiny-q4_0.gguf and llama-tiny-f32.gguf from tests/fixtures/llama-tiny.

The LLaMA parity fixture written the way llama.cpp's converter writes a model: `llama.*`
hyper-parameters, the byte-level BPE as `tokenizer.ggml.*` (tokens, types, merges, special ids),
a small chat template, and the weights under GGUF names with the query and key rows permuted
for llama.cpp's rotary layout. The f32 file holds every tensor as F32; the q4_0 file stores the
projections in Q4_0 blocks (norms stay F32, the embedding Q8_0), as a quantized download would.
They seed the GGUF fuzz target and let the tests compare a GGUF load with the safetensors one.

    pip install gguf numpy safetensors
    python3 tests/scripts/make_gguf_fixture.py
"""

import json
import os

import gguf
import numpy as np
from safetensors.numpy import load_file

HERE = os.path.dirname(__file__)
SOURCE = os.path.join(HERE, "..", "fixtures", "llama-tiny")
OUT = os.path.join(HERE, "..", "fixtures")
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def rotary_rows(w, heads):
    """Reorders each head's rows from the interleaved-halves layout Hugging Face uses to the
    pairwise layout llama.cpp uses: row (half h, index i) moves to position 2 i + h."""
    out_dim, width = w.shape
    d = out_dim // heads
    return w.reshape(heads, 2, d // 2, width).transpose(0, 2, 1, 3).reshape(out_dim, width)


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    layer, rest = parts[2], ".".join(parts[3:-1])
    return f"blk.{layer}.{LAYER_NAMES[rest]}.weight"


def write(path, config, tokenizer, tensors, kind):
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("llama-tiny")
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_block_count(config["num_hidden_layers"])
    w.add_head_count(config["num_attention_heads"])
    w.add_head_count_kv(config["num_key_value_heads"])
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    w.add_rope_dimension_count(config["head_dim"])
    w.add_vocab_size(config["vocab_size"])
    vocab = tokenizer["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {a["id"] for a in tokenizer["added_tokens"] if a["special"]}
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    merges = tokenizer["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(config["bos_token_id"])
    w.add_eos_token_id(config["eos_token_id"])
    w.add_chat_template(TEMPLATE)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for hf in sorted(tensors):
        data = tensors[hf].astype(np.float32)
        if hf.endswith("q_proj.weight"):
            data = rotary_rows(data, heads)
        elif hf.endswith("k_proj.weight"):
            data = rotary_rows(data, kv_heads)
        name = gguf_name(hf)
        qtype = gguf.GGMLQuantizationType.F32
        if kind == "q4_0" and data.ndim == 2:
            qtype = (
                gguf.GGMLQuantizationType.Q8_0
                if name == "token_embd.weight"
                else gguf.GGMLQuantizationType.Q4_0
            )
        if qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    with open(os.path.join(SOURCE, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(SOURCE, "tokenizer.json")) as f:
        tokenizer = json.load(f)
    tensors = load_file(os.path.join(SOURCE, "model.safetensors"))
    for kind in ["f32", "q4_0"]:
        path = os.path.join(OUT, f"llama-tiny-{kind}.gguf")
        write(path, config, tokenizer, tensors, kind)
        print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
