"""Time `mpcc.compile` (trace + passes) on presets; prints a table and JSON.

    python benchmarks/compile_time.py [preset ...]    (default: bert-base at seq 128)
"""
from __future__ import annotations

import json
import sys
import time

import mpcc
from mpcc.models import example_inputs, load_model


def main(names):
    rows = []
    for name in names or ["bert-base"]:
        loaded = load_model(name)
        inputs = example_inputs(loaded)
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            plan = mpcc.compile(loaded.model, inputs)
            timings.append(time.perf_counter() - start)
        rows.append({"model": name, "seq_len": loaded.seq_len, "nodes": len(plan.graph.nodes),
                     "compile_s_best": round(min(timings), 3), "compile_s_all": [round(t, 3) for t in timings]})
        print(f"{name:10} seq {loaded.seq_len:4}  nodes {len(plan.graph.nodes):5}  compile {min(timings):.2f} s "
              f"(runs: {', '.join(f'{t:.2f}' for t in timings)})")
    print(json.dumps(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
