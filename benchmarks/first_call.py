"""The first ``mpcc.run`` of a fresh Python process: one BERT-base encoder layer
(random weights) is built and compiled, then one whole ``mpcc.run`` call is
timed. That call also records the plan's dealer tape and touches the memory
a run needs for the first time. Each try is a new process.

    python benchmarks/first_call.py [--seq 128] [--tries 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

ONE_TRY = """
import time, torch, mpcc
from mpcc.bench import bert_layer
layer = bert_layer()
x = torch.randn(1, {seq}, 768, generator=torch.Generator().manual_seed(1))
plan = mpcc.compile(layer, {{"hidden_states": x}})
weights = layer.state_dict()
start = time.perf_counter()
mpcc.run(plan, {{"hidden_states": x}}, weights, progress=False)
print(time.perf_counter() - start)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    times = []
    for index in range(args.tries):
        done = subprocess.run([sys.executable, "-c", ONE_TRY.format(seq=args.seq)], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        times.append(float(done.stdout.split()[-1]))
        print(f"try {index + 1}: {times[-1]:.3f} s", flush=True)
    print(f"first mpcc.run in a fresh process, seq {args.seq}: min {min(times):.3f} s, "
          f"median {statistics.median(times):.3f} s, max {max(times):.3f} s")


if __name__ == "__main__":
    main()
