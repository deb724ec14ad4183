"""PyTorch peer for `cinder bench train`: the same workloads with transformers' GPT2LMHeadModel
(tiny, small, tang) and LlamaForCausalLM (tang-llama, the default `cinder train` model) on random
tokens, printing `<workload> <tokens_per_second>` as its last line.

    pip install torch transformers
    python3 scripts/bench_torch.py --workload tiny --threads 2
    python3 scripts/bench_torch.py --workload small --threads 2 --steps 10
    python3 scripts/bench_torch.py --workload tang-llama --threads 2

Each step: forward with labels (causal-LM loss), backward, global-norm clipping at 1.0, AdamW
(lr 3e-4, weight decay 0.1), zero_grad. Warmup steps are not timed.
"""

import argparse
import os
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

WORKLOADS = {
    # name: (family, layers, heads, width, context, batch, vocab)
    "tiny": ("gpt2", 4, 4, 128, 64, 12, 65),
    "small": ("gpt2", 6, 6, 384, 256, 8, 8192),
    # tiny with the Tang poems' characters (the default `cinder train` vocabulary)
    "tang": ("gpt2", 4, 4, 128, 64, 16, 8599),
    # the default `cinder train` model: the nano LLaMA (SwiGLU 192 wide, tied head)
    "tang-llama": ("llama", 4, 4, 64, 128, 4, 8599),
}


def build(family, layers, heads, width, context, vocab):
    """The workload's model, as `cinder bench train` builds it (no dropout, tied head)."""
    if family == "llama":
        config = LlamaConfig(
            vocab_size=vocab, hidden_size=width, intermediate_size=((8 * width + 2) // 3 + 31) // 32 * 32,
            num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
            max_position_embeddings=context, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=True,
        )
        return LlamaForCausalLM(config)
    config = GPT2Config(
        vocab_size=vocab, n_positions=context, n_embd=width, n_layer=layers, n_head=heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    family, layers, heads, width, context, batch, vocab = WORKLOADS[args.workload]
    model = build(family, layers, heads, width, context, vocab).train()
    optim = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    timed = 0.0
    for i in range(args.warmup + args.steps):
        tokens = torch.randint(0, vocab, (batch, context), generator=gen)
        t0 = time.perf_counter()
        loss = model(tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        phase = "warmup" if i < args.warmup else "timed"
        if i >= args.warmup:
            timed += dt
        print(f"step {i + 1:>3} ({phase}): loss {loss.item():.4f}, {dt * 1e3:.1f} ms", file=sys.stderr)
    print(f"{args.workload} {batch * context * args.steps / timed:.1f}")


if __name__ == "__main__":
    main()
