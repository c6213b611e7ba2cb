"""Measurements shared by ``mpcc bench`` and ``benchmarks/``: one BERT-base
encoder layer (or a whole model) run securely, against float64 torch."""
from __future__ import annotations

import time
from contextlib import nullcontext

import torch

__all__ = ["bert_layer", "measure_model", "format_row", "report", "HEADER"]

HEADER = (f"{'case':>18} {'total s':>8} {'mpcc.run s':>10} {'online-only s':>13} {'dealer s':>9} {'online MB':>10} {'client MB':>10} "
          f"{'server MB':>10} {'offline MB':>10} {'rounds':>7} {'max err':>9}")


def bert_layer(hidden=768, heads=12, ffn=3072, seed=0):
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer
    torch.manual_seed(seed)
    config = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn)
    return BertLayer(config).eval()


def measure_model(name: str, model, inputs: dict, *, repeats: int = 2, owners=None, backend: str = "cpu",
                  step=lambda what: nullcontext(), overflow_check: bool = False, approx="exact") -> dict:
    """Compile, run ``repeats`` times in one session (setup once), keep the fastest run;
    then the online phase alone (material dealt ahead) and whole one-shot ``mpcc.run`` calls.
    ``step(what)`` is a context manager around each stage (the CLI shows them as progress)."""
    import mpcc
    from .frontend import reference_outputs
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, not {repeats}")
    start = time.perf_counter()
    with step("tracing and compiling"):
        plan = mpcc.compile(model, inputs, owners=owners, overflow_check=overflow_check, approx=approx)
    compile_seconds = time.perf_counter() - start
    cost = plan.cost()
    with step("float64 torch reference"):
        expected = reference_outputs(model, inputs)
        planned = mpcc.interpret(plan, inputs, model.state_dict())   # the plan's own meaning (substitutes in)
    session = mpcc.Session(plan, model.state_dict(), progress=False, backend=backend)
    runs = []
    for index in range(repeats):
        with step(f"secure run {index + 1} of {repeats}"):
            outputs, stats = session.run(inputs)
        error = max(float((o - e).abs().max()) for o, e in zip(outputs, expected))
        plan_error = max(float((o - e).abs().max()) for o, e in zip(outputs, planned))
        runs.append((stats, error, plan_error))
    shape_run_seconds = session.dealer.shape_run_seconds   # recorded during the first run
    stats, error, plan_error = min(runs[1:] or runs, key=lambda r: r[0].total_seconds)
    online_only = []
    for index in range(max(1, repeats - 1)):  # material dealt ahead: the online phase alone
        with step(f"dealing ahead, then the online phase alone ({index + 1} of {max(1, repeats - 1)})"):
            material = session.dealer.deal(f"ahead-{index}")
            online_only.append(session.run(inputs, material=material)[1].online_seconds)
    del session
    one_shot = []   # the whole mpcc.run call: a new deployment (setup message) and the dealer, every time
    calls = max(1, min(3, repeats - 1))
    for index in range(calls):
        with step(f"one-shot mpcc.run ({index + 1} of {calls})"):
            begin = time.perf_counter()
            mpcc.run(plan, inputs, model.state_dict(), progress=False, backend=backend)
            one_shot.append(time.perf_counter() - begin)
    return {"case": name, "compile_s": round(compile_seconds, 3), "dealer_shape_run_s": round(shape_run_seconds, 3),
            "total_s": round(stats.total_seconds, 3),
            "online_s": round(stats.online_seconds, 3), "offline_s": round(stats.offline_seconds, 3),
            "online_only_s": round(min(online_only), 3),
            "mpcc_run_s": round(min(one_shot), 3), "all_mpcc_run_s": [round(t, 3) for t in one_shot],
            "online_MB": round(stats.online_bytes_total / 1e6, 2),
            "online_MB_client": round(stats.online_bytes[0] / 1e6, 2),
            "online_MB_server": round(stats.online_bytes[1] / 1e6, 2),
            "offline_MB": round(stats.offline_bytes / 1e6, 2), "setup_MB": round(cost.setup_bytes / 1e6, 2),
            "rounds": stats.rounds, "max_abs_error": error, "max_abs_error_vs_plan": plan_error,
            "approx": plan.approx, "sequential_rounds": cost.sequential_rounds, "first_run_s": round(runs[0][0].total_seconds, 3),
            "median_total_s": round(sorted(r[0].total_seconds for r in runs[1:] or runs)[len(runs[1:] or runs) // 2], 3),
            "all_total_s": [round(r[0].total_seconds, 3) for r in runs],
            "by_family": {k: {"s": round(v["seconds"], 3), "MB": round(v["bytes"] / 1e6, 2)}
                          for k, v in sorted(stats.by_family.items(), key=lambda kv: -kv[1]["seconds"])},
            "cost_model": {"rounds": cost.rounds, "online_MB": round(cost.online_bytes / 1e6, 2),
                           "lan_estimate_s": round(cost.estimate_seconds("lan"), 3),
                           "wan_estimate_s": round(cost.estimate_seconds("wan"), 3)}}


def format_row(r: dict) -> str:
    return (f"{r['case']:>18} {r['total_s']:>8.3f} {r['mpcc_run_s']:>10.3f} {r['online_only_s']:>13.3f} "
            f"{r['offline_s']:>9.3f} {r['online_MB']:>10.2f} {r['online_MB_client']:>10.2f} {r['online_MB_server']:>10.2f} {r['offline_MB']:>10.2f} "
            f"{r['rounds']:>7} {r['max_abs_error']:>9.2e}")


def report(rows: list[dict], json_path: str | None = None) -> None:
    """Print the table, the op-by-op breakdown and the JSON; optionally write the JSON."""
    import json
    print(HEADER)
    for row in rows:
        print(format_row(row))
    for row in rows:
        print(f"{row['case']} by op: " + ", ".join(f"{k} {v['s']} s / {v['MB']} MB" for k, v in row["by_family"].items()))
    print(json.dumps(rows))
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(rows, handle, indent=1)
