"""One BERT-base encoder layer (hidden 768, 12 heads, FFN 3072, random weights):
the server holds the weights, the client the activations. Prints wall time of
a run in a session (the dealer works beside the parties; best of the runs after
the first, which also sends the once-per-deployment setup), of a whole one-shot
``mpcc.run`` call (a new deployment each time: setup message and dealer
included), of the online phase alone (material dealt ahead), the dealer's busy
time, bytes, rounds and max error against float64 torch, the time and bytes by
op, and JSON.

    python benchmarks/bert_layer.py [--seq 32 128] [--repeats 4] [--approx exact mpcformer] [--overflow-check]
        [--json out.json]

With a substituting preset the error against torch measures the substitutes; the error
against the plan's own meaning (``mpcc.interpret``) measures the secure run.
"""
from __future__ import annotations

import argparse
import torch

from mpcc.bench import bert_layer, measure_model, report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--overflow-check", action="store_true",
                        help="also measure plans compiled with the secure overflow check")
    parser.add_argument("--approx", nargs="+", default=["exact"], help="approximation presets to measure")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    layer = bert_layer()
    rows = []
    for seq in args.seq:
        x = torch.randn(1, seq, 768, generator=torch.Generator().manual_seed(1))
        for approx in args.approx:
            for checked in (False, True) if args.overflow_check else (False,):
                name = f"layer {seq} {approx}" + (" +check" if checked else "")
                rows.append(measure_model(name, layer, {"hidden_states": x}, repeats=args.repeats,
                                          overflow_check=checked, approx=approx))
    report(rows, args.json)


if __name__ == "__main__":
    main()
