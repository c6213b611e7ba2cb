"""The ``mpcc`` command: compile, dump, interpret, run, cost, bench, ops, demo."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _load(args):
    from .models import example_inputs, load_model
    loaded = load_model(args.model)
    inputs = example_inputs(loaded, seq_len=args.seq, text=getattr(args, "input", None))
    return loaded, inputs


def _is_plan_file(name: str) -> bool:
    path = Path(name)
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(9) == b"mpcc-plan"


def _print_summary(graph, out=None):
    out = out or sys.stdout
    summary = graph.summary()
    print("ops by kind:       " + ", ".join(f"{k} {v}" for k, v in summary["ops"].items()), file=out)
    print("values by visibility: " + ", ".join(f"{k} {v}" for k, v in summary["visibility"].items()), file=out)


def cmd_compile(args) -> int:
    import mpcc
    loaded, inputs = _load(args)
    start = time.perf_counter()
    plan = mpcc.compile(loaded.model, inputs, approx=args.approx)
    seconds = time.perf_counter() - start
    plan.info.update({"model": args.model, "seq_len": int(inputs["input_ids"].shape[-1])})
    plan.save(args.output)
    print(f"compiled {args.model} (seq {inputs['input_ids'].shape[-1]}) in {seconds:.2f} s -> {args.output}")
    _print_summary(plan.graph)
    return 0


def cmd_dump(args) -> int:
    import mpcc
    from .frontend import trace
    from .passes import PASSES, SECURE_PIPELINE, run_pipeline
    if _is_plan_file(args.model):
        if args.after:
            raise SystemExit("--after needs a model, not a compiled plan (a plan holds only the final IR)")
        graph = mpcc.load(args.model).graph
    else:
        loaded, inputs = _load(args)
        graph = trace(loaded.model, inputs)
        if args.after != "import":
            if args.after and args.after not in SECURE_PIPELINE:
                known = ", ".join(("import",) + SECURE_PIPELINE)
                extra = " (it is registered but not in the pipeline)" if args.after in PASSES else ""
                raise SystemExit(f"unknown pass {args.after!r}{extra}; choose one of: {known}")
            names = SECURE_PIPELINE[:SECURE_PIPELINE.index(args.after) + 1] if args.after else SECURE_PIPELINE
            graph = run_pipeline(graph, names)
    if args.summary:
        _print_summary(graph)
    else:
        sys.stdout.write(graph.dump())
    return 0


def _agreement(loaded, inputs, graph):
    import mpcc
    from .frontend import reference_outputs
    expected = reference_outputs(loaded.model, inputs)
    outputs = mpcc.interpret(graph, inputs, loaded.model.state_dict())
    return [(name, tuple(o.shape), float((o - e).abs().max()))
            for name, o, e in zip(graph.outputs, outputs, expected)]


def _analysed(loaded, inputs):
    """The traced model after the analysis passes (before fusion and lowering): what the interpreter checks."""
    from .frontend import trace
    from .passes import DEFAULT_PIPELINE, run_pipeline
    return run_pipeline(trace(loaded.model, inputs), DEFAULT_PIPELINE)


def cmd_interpret(args) -> int:
    loaded, inputs = _load(args)
    worst = 0.0
    for name, shape, error in _agreement(loaded, inputs, _analysed(loaded, inputs)):
        worst = max(worst, error)
        print(f"output %{name} {list(shape)}: max |interpreter - torch| = {error:.2e}")
    ok = worst < 1e-5
    print("agreement with torch: " + ("OK (< 1e-5)" if ok else "FAILED"))
    return 0 if ok else 1


def cmd_run(args) -> int:
    import mpcc
    if _is_plan_file(args.model):  # a compiled plan: weights and example inputs from the model it names
        from .models import example_inputs, load_model
        plan = mpcc.load(args.model)
        source = args.weights or plan.info.get("model")
        if not source:
            raise SystemExit(f"mpcc run: {args.model} does not name its model; give --weights PRESET_OR_DIRECTORY")
        loaded = load_model(source)
        inputs = example_inputs(loaded, seq_len=args.seq or plan.info.get("seq_len"), text=args.input)
    else:
        loaded, inputs = _load(args)
        plan = mpcc.compile(loaded.model, inputs)
    outputs, stats = mpcc.run(plan, inputs, loaded.model.state_dict(), backend=args.backend)
    worst = _report_secure(loaded, inputs, plan, outputs)
    print(stats.summary())
    if args.json:
        import json
        print(json.dumps(stats.as_dict()))
    return 0 if worst < 1e-1 else 1


def _report_secure(loaded, inputs, plan, outputs) -> float:
    from .frontend import reference_outputs
    expected = reference_outputs(loaded.model, inputs)
    worst = 0.0
    for name, got, want in zip(plan.graph.outputs, outputs, expected):
        error = float((got - want).abs().max())
        worst = max(worst, error)
        print(f"output %{name} {list(got.shape)}: max |secure - torch| = {error:.2e}")
        if got.dim() == 3 and got.shape[-1] == getattr(loaded.model.config, "vocab_size", -1):
            print(f"  next token (greedy): secure {int(got[0, -1].argmax())}, torch {int(want[0, -1].argmax())}")
    return worst


def cmd_cost(args) -> int:
    import mpcc
    if _is_plan_file(args.model):
        plan = mpcc.load(args.model)
    else:
        loaded, inputs = _load(args)
        plan = mpcc.compile(loaded.model, inputs)
    print(plan.cost().summary(args.network))
    return 0


def cmd_bench(args) -> int:
    import torch
    from .bench import bert_layer, measure_model, report
    layer = bert_layer()
    rows = []
    for seq in args.seq:
        x = torch.randn(1, seq, 768, generator=torch.Generator().manual_seed(1))
        rows.append(measure_model(f"bert-layer seq {seq}", layer, {"hidden_states": x}, repeats=args.repeats,
                                  backend=args.backend))
    report(rows)
    return 0


def cmd_ops(args) -> int:
    from .aten_table import supported_aten_ops
    from .ops import REGISTRY
    if args.aten:
        print("\n".join(f"aten.{name}" for name in supported_aten_ops()))
    else:
        for name, op in sorted(REGISTRY.items()):
            print(f"{name:18} {op.family:12} ({', '.join(op.params)})  {op.doc}")
    return 0


def cmd_demo(args) -> int:
    args.model, args.seq, args.input = "tiny-bert", None, None
    import mpcc
    loaded, inputs = _load(args)
    start = time.perf_counter()
    plan = mpcc.compile(loaded.model, inputs)
    print(f"== mpcc demo: compiled tiny-bert (seq {inputs['input_ids'].shape[-1]}) in "
          f"{time.perf_counter() - start:.2f} s")
    _print_summary(plan.graph)
    print("== plaintext interpreter (float64) against torch:")
    for name, shape, error in _agreement(loaded, inputs, _analysed(loaded, inputs)):
        print(f"output %{name} {list(shape)}: max abs error {error:.2e}")
    print("== cost model:")
    print(plan.cost().summary())
    print("== secure two-party run (client and server threads, dealer included) against torch:")
    outputs, stats = mpcc.run(plan, inputs, loaded.model.state_dict())
    _report_secure(loaded, inputs, plan, outputs)
    print(stats.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpcc", description="Compile PyTorch transformers to two-party MPC.")
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p):
        p.add_argument("model", help="preset (tiny-bert, tiny-gpt2, bert-base, gpt2, minilm) or a HF model directory")
        p.add_argument("--seq", type=int, default=None, help="sequence length of random example ids")
        p.add_argument("--input", default=None, help="text (needs a tokenizer) or token ids like '1 2 3'")

    p = sub.add_parser("compile", help="trace and compile a model into a plan file")
    model_args(p)
    p.add_argument("-o", "--output", required=True, help="plan file to write")
    p.add_argument("--approx", default="exact", help="approximation preset (exact)")
    p.set_defaults(run=cmd_compile)

    p = sub.add_parser("dump", help="print the IR of a model (after a pass) or of a plan file")
    model_args(p)
    p.add_argument("--after", default=None, help="stop after this pass ('import' for the raw import)")
    p.add_argument("--summary", action="store_true", help="print op and visibility counts only")
    p.set_defaults(run=cmd_dump)

    p = sub.add_parser("interpret", help="run the IR in plaintext float64 and compare with torch")
    model_args(p)
    p.set_defaults(run=cmd_interpret)

    p = sub.add_parser("run", help="compile (or load a plan file) and run securely (client and server in this "
                                   "process), compare with torch")
    model_args(p)
    p.add_argument("--weights", default=None, help="for a plan file: preset or model directory holding the weights "
                                                     "(default: the model the plan was compiled from)")
    p.add_argument("--backend", default="cpu", choices=["cpu", "limb", "cuda"])
    p.add_argument("--json", action="store_true", help="also print the stats as JSON")
    p.set_defaults(run=cmd_run)

    p = sub.add_parser("cost", help="rounds, bytes and dealer material of a model or plan file")
    model_args(p)
    p.add_argument("--network", default="lan", choices=["lan", "wan", "local"])
    p.set_defaults(run=cmd_cost)

    p = sub.add_parser("bench", help="one BERT-base encoder layer, secure, timed (see benchmarks/)")
    p.add_argument("--seq", type=int, nargs="+", default=[128])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--backend", default="cpu", choices=["cpu", "limb", "cuda"])
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser("ops", help="list the IR ops (or, with --aten, the ATen ops mpcc imports)")
    p.add_argument("--aten", action="store_true")
    p.set_defaults(run=cmd_ops)

    p = sub.add_parser("demo", help="compile tiny-bert and check it against torch")
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .frontend import TraceError
    from .interpreter import InterpretError
    from .models import ModelLoadError
    from .plan import PlanFormatError
    from .runtime import RunError
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except (TraceError, InterpretError, ModelLoadError, PlanFormatError, RunError, ValueError, OSError) as error:
        print(f"mpcc {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
