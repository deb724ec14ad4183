"""Peers for `cinder bench decode`: greedy decoding of a LLaMA-family model from the same GGUF
file, printing prefill and decode tokens/s in the same last-line format.

    --engine transformers   transformers + PyTorch, the file dequantized to float32
                            (pip install torch transformers gguf accelerate)
    --engine llama.cpp      llama.cpp on the file's own blocks (pip install llama-cpp-python
                            numpy; it builds llama.cpp for this CPU)

    python3 scripts/bench_decode_torch.py --model cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2
    python3 scripts/bench_decode_torch.py --engine llama.cpp --model cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 2

A random prompt of --prompt-tokens tokens, then --tokens new tokens with a KV cache. Prefill is
timed as the generation of one token; decode as the time of the remaining tokens. One untimed
warmup run, then the best of --runs.
"""

import argparse
import os
import sys
import time


def transformers_runner(args):
    """A function that decodes n tokens after the prompt and returns the seconds it took."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    folder, name = os.path.split(os.path.abspath(args.model))
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    prompt = torch.randint(0, vocab, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(prompt)

    def run(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=n,
                           min_new_tokens=n, pad_token_id=0)
        return time.perf_counter() - t0

    return run


def llama_cpp_runner(args):
    """The same with llama.cpp: the prompt in one batch, then one token per step, each chosen
    as the argmax of the logits."""
    import llama_cpp
    import numpy as np
    from llama_cpp import Llama

    llm = Llama(model_path=args.model, n_ctx=args.prompt_tokens + args.tokens + 8,
                n_batch=max(args.prompt_tokens, 8), n_threads=args.threads,
                n_threads_batch=args.threads, verbose=False)
    rng = np.random.default_rng(7)
    prompt = rng.integers(0, llm.n_vocab(), args.prompt_tokens).tolist()

    vocab = llm.n_vocab()

    def last_logits():
        pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return np.ctypeslib.as_array(pointer, shape=(vocab,))

    def run(n):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        for _ in range(n - 1):
            llm.eval([int(np.argmax(last_logits()))])
        int(np.argmax(last_logits()))
        return time.perf_counter() - t0

    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--engine", choices=["transformers", "llama.cpp"], default="transformers")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    run = llama_cpp_runner(args) if args.engine == "llama.cpp" else transformers_runner(args)

    run(args.tokens)
    best_prefill, best_decode = float("inf"), float("inf")
    for i in range(args.runs):
        prefill = run(1)
        total = run(args.tokens)
        decode = total - prefill
        best_prefill, best_decode = min(best_prefill, prefill), min(best_decode, decode)
        print(f"run {i + 1}: prefill {args.prompt_tokens / prefill:.1f} tokens/s, "
              f"decode {(args.tokens - 1) / decode:.1f} tokens/s", file=sys.stderr)
    print(f"decode {args.engine} prompt {args.prompt_tokens} tokens {args.tokens} "
          f"prefill_tokens_per_second {args.prompt_tokens / best_prefill:.1f} "
          f"decode_tokens_per_second {(args.tokens - 1) / best_decode:.1f}")


if __name__ == "__main__":
    main()
