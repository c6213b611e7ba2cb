"""One BERT-base encoder layer (hidden 768, 12 heads, FFN 3072, random weights),
secret weights (server) and secret activations (client), both parties in one
process. Prints wall time (dealer included), online time, bytes, rounds and
max error against float64 torch; ``--json`` for machine-readable output.

    python benchmarks/bert_layer.py [--seq 32 128] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import mpcc


def build_layer(hidden=768, heads=12, ffn=3072, seed=0):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn)
    return BertLayer(config).eval()


def measure(seq: int, hidden=768, heads=12, ffn=3072, repeats=2):
    layer = build_layer(hidden, heads, ffn)
    x = torch.randn(1, seq, hidden, generator=torch.Generator().manual_seed(1))
    start = time.perf_counter()
    plan = mpcc.compile(layer, {"hidden_states": x})
    compile_seconds = time.perf_counter() - start
    cost = plan.cost()
    session = mpcc.Session(plan, layer.state_dict(), progress=False)
    with torch.no_grad():
        result = layer(x)
        expected = (result[0] if isinstance(result, tuple) else result).double()
    runs = []
    for _ in range(repeats):
        outputs, stats = session.run({"hidden_states": x})
        runs.append((stats, float((outputs[0] - expected).abs().max())))
    stats, error = min(runs, key=lambda r: r[0].total_seconds)
    return {"seq": seq, "compile_s": round(compile_seconds, 3), "total_s": round(stats.total_seconds, 3),
            "online_s": round(stats.online_seconds, 3), "offline_s": round(stats.offline_seconds, 3),
            "online_MB": round(stats.online_bytes_total / 1e6, 2),
            "online_MB_client": round(stats.online_bytes[0] / 1e6, 2),
            "online_MB_server": round(stats.online_bytes[1] / 1e6, 2),
            "offline_MB": round(stats.offline_bytes / 1e6, 2), "setup_MB": round(cost.setup_bytes / 1e6, 2),
            "rounds": stats.rounds, "max_abs_error": error, "first_run_s": round(runs[0][0].total_seconds, 3),
            "by_family": {k: {"s": round(v["seconds"], 3), "MB": round(v["bytes"] / 1e6, 2)}
                          for k, v in sorted(stats.by_family.items(), key=lambda kv: -kv[1]["seconds"])},
            "cost_model": {"rounds": cost.rounds, "online_MB": round(cost.online_bytes / 1e6, 2)}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = [measure(seq, repeats=args.repeats) for seq in args.seq]
    print(f"{'seq':>4} {'total s':>8} {'online s':>9} {'offline s':>9} {'online MB':>10} {'client MB':>10} "
          f"{'server MB':>10} {'offline MB':>10} {'rounds':>7} {'max err':>9}")
    for r in rows:
        print(f"{r['seq']:>4} {r['total_s']:>8.3f} {r['online_s']:>9.3f} {r['offline_s']:>9.3f} {r['online_MB']:>10.2f} "
              f"{r['online_MB_client']:>10.2f} {r['online_MB_server']:>10.2f} {r['offline_MB']:>10.2f} "
              f"{r['rounds']:>7} {r['max_abs_error']:>9.2e}")
    for r in rows:
        print(f"seq {r['seq']} time and bytes by op: " + ", ".join(f"{k} {v['s']}s/{v['MB']}MB"
                                                                   for k, v in r["by_family"].items()))
    print(json.dumps(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
