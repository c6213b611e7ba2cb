"""One BERT-base encoder layer (hidden 768, 12 heads, FFN 3072, random weights):
the server holds the weights, the client the activations. Prints wall time
(dealer included), online time, bytes, rounds and max error against float64
torch, the time and bytes by op, and JSON.

    python benchmarks/bert_layer.py [--seq 32 128] [--repeats 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json

import torch

from mpcc.bench import HEADER, bert_layer, format_row, measure_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    layer = bert_layer()
    rows = []
    for seq in args.seq:
        x = torch.randn(1, seq, 768, generator=torch.Generator().manual_seed(1))
        rows.append(measure_model(f"bert-layer seq {seq}", layer, {"hidden_states": x}, repeats=args.repeats))
    print(HEADER)
    for row in rows:
        print(format_row(row))
    for row in rows:
        print(f"{row['case']} by op: " + ", ".join(f"{k} {v['s']} s / {v['MB']} MB" for k, v in row["by_family"].items()))
    print(json.dumps(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
