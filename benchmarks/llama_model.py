"""A Llama-architecture model at a realistic width, run securely: time, bytes, rounds, error.

    python benchmarks/llama_model.py                       # hidden 512, 8 heads, 4 KV heads, 4 layers, seq 64
    python benchmarks/llama_model.py --layers 2 --seq 32 --approx exact mpcformer

Random weights from a fixed seed (nothing is downloaded); the error is against the
float64 PyTorch model.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import mpcc
from mpcc.frontend import reference_outputs


def build(hidden: int, heads: int, kv_heads: int, layers: int, vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 64 * 64 + 64,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, bos_token_id=0, eos_token_id=0)
    return LlamaForCausalLM(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="runs in one session (the first deals the tape)")
    parser.add_argument("--approx", nargs="+", default=["exact"])
    args = parser.parse_args()
    model = build(args.hidden, args.heads, args.kv_heads, args.layers, args.vocab)
    inputs = {"input_ids": torch.randint(0, args.vocab, (1, args.seq), generator=torch.Generator().manual_seed(1))}
    (expected,) = reference_outputs(model, inputs)
    for approx in args.approx:
        start = time.perf_counter()
        plan = mpcc.compile(model, inputs, approx=approx)
        compile_s = time.perf_counter() - start
        session = mpcc.Session(plan, model.state_dict(), progress=False, timeout=600)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            (logits,), stats = session.run(inputs)
            times.append(round(time.perf_counter() - start, 2))
        cost = plan.cost()
        print(json.dumps({"approx": approx, "compile_s": round(compile_s, 1), "run_s": times,
                          "online_MB": round(stats.online_bytes_total / 1e6, 1), "rounds": stats.rounds,
                          "offline_MB": round(stats.offline_bytes / 1e6, 1), "setup_MB": round(stats.setup_bytes / 1e6, 1),
                          "wan_estimate_s": round(cost.estimate_seconds("wan"), 1),
                          "max_abs_error": float((logits - expected).abs().max()),
                          "max_abs_logit": float(expected.abs().max())}))


if __name__ == "__main__":
    main()
