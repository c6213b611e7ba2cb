"""Whole models at sequence 128: BERT-base (12 layers, random weights) and the
pretrained all-MiniLM-L6-v2, run securely; prints the same table as
bert_layer.py and JSON. Heavy: minutes on a 2-core machine.

    python benchmarks/bert_model.py [--models bert-base minilm] [--seq 128] [--backend cuda]
"""
from __future__ import annotations

import argparse

from mpcc.bench import format_row, measure_model, report
from mpcc.models import example_inputs, load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bert-base", "minilm"])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--backend", default="cpu", choices=["cpu", "limb", "cuda"])
    parser.add_argument("--approx", nargs="+", default=["exact"], help="approximation presets to measure")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for name in args.models:
        loaded = load_model(name)
        inputs = example_inputs(loaded, seq_len=args.seq)
        for approx in args.approx:
            rows.append(measure_model(f"{name} {args.seq} {approx}", loaded.model, inputs, repeats=args.repeats,
                                      backend=args.backend, approx=approx))
            print(format_row(rows[-1]), flush=True)
    report(rows, args.json)


if __name__ == "__main__":
    main()
