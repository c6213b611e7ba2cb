"""The supported-models table: every family of ``mpcc.zoo`` traced, interpreted and
run securely at its tiny config; errors against float64 torch.

    python benchmarks/models_table.py                 # print the table
    python benchmarks/models_table.py --write         # also rewrite it in docs/models.md and README.md

The table sits between ``<!-- models-table -->`` markers in both files.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

import mpcc
from mpcc.frontend import reference_outputs
from mpcc.zoo import FAMILIES, build

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- models-table -->"


def _error(outputs, expected) -> float:
    return max(float((got - want).abs().max()) for got, want in zip(outputs, expected))


def measure(name: str) -> dict:
    row = {"family": name, "class": FAMILIES[name].model_class, "trace": "", "interpret": "", "secure": "",
           "rounds": "", "MB": "", "seconds": ""}
    model, inputs = build(name)
    expected = reference_outputs(model, inputs)
    stage = "trace"
    try:
        plan = mpcc.compile(model, inputs, owners=FAMILIES[name].owners)
        row["trace"] = "ok"
        stage = "interpret"
        row["interpret"] = f"{_error(mpcc.interpret(plan.graph, inputs, model.state_dict()), expected):.1e}"
        stage = "secure"
        start = time.perf_counter()
        outputs, stats = mpcc.run(plan, inputs, model.state_dict(), progress=False)
        row.update(secure=f"{_error(outputs, expected):.1e}", rounds=str(stats.rounds),
                   MB=f"{stats.online_bytes_total / 1e6:.2f}", seconds=f"{time.perf_counter() - start:.2f}")
    except Exception as error:   # the table says where a family stops and why
        row[stage] = f"fails: {type(error).__name__}: {str(error).splitlines()[0][:90]}"
    return row


def table(rows: list[dict]) -> str:
    header = "| family | class | trace | interpret error | secure error | rounds | online MB | run s |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['family']} | {r['class']} | {r['trace']} | {r['interpret']} | {r['secure']} | "
                     f"{r['rounds']} | {r['MB']} | {r['seconds']} |")
    return "\n".join(lines)


def _rewrite(path: Path, text: str) -> None:
    content = path.read_text()
    pattern = re.compile(f"{re.escape(MARKER)}.*?{re.escape(MARKER)}", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{path} has no pair of {MARKER} markers")
    path.write_text(pattern.sub(lambda _: f"{MARKER}\n{text}\n{MARKER}", content))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--write", action="store_true", help="rewrite the table in docs/models.md and README.md")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    for name in args.families:
        rows.append(measure(name))
        print(f"{name}: {rows[-1]['secure'] or rows[-1]['interpret'] or rows[-1]['trace']}", file=sys.stderr)
    text = table(rows)
    print(text)
    if args.write:
        for path in (ROOT / "docs" / "models.md", ROOT / "README.md"):
            _rewrite(path, text)


if __name__ == "__main__":
    main()
