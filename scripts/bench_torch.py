"""PyTorch peer for `cinder bench train`: the same GPT-2 workloads with transformers'
GPT2LMHeadModel on random tokens, printing `<workload> <tokens_per_second>` as its last line.

    pip install torch transformers
    python3 scripts/bench_torch.py --workload tiny --threads 2
    python3 scripts/bench_torch.py --workload small --threads 2 --steps 10

Each step: forward with labels (causal-LM loss), backward, global-norm clipping at 1.0, AdamW
(lr 3e-4, weight decay 0.1), zero_grad. Warmup steps are not timed.
"""

import argparse
import os
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

WORKLOADS = {
    # name: (layers, heads, width, context, batch, vocab)
    "tiny": (4, 4, 128, 64, 12, 65),
    "small": (6, 6, 384, 256, 8, 8192),
    # tiny with the Tang poems' characters (the default `cinder train` vocabulary)
    "tang": (4, 4, 128, 64, 16, 8599),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers, heads, width, context, batch, vocab = WORKLOADS[args.workload]
    config = GPT2Config(
        vocab_size=vocab, n_positions=context, n_embd=width, n_layer=layers, n_head=heads,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config).train()
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
