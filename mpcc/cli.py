"""The ``mpcc`` command: compile, dump, interpret, run, cost, bench, ops, demo (and, in cli_net,
certs, dealer, serve and run --connect).

Every mistake in a call ends in one line on stderr, ``mpcc CMD: error: ...``,
and exit code 2; the steps that take a while are in ``cli_steps``.
"""
from __future__ import annotations

import argparse
import sys
import time

from .cli_steps import (INTERPRET_TOLERANCE, OWNER_CHOICES, SECURE_TOLERANCE, CliError, check_backend, compile_model,
                        is_plan, load_model_and_inputs, load_plan, parse_owners, reference, step, verdict)

__all__ = ["main", "build_parser"]


def _load(args):
    """The model, its inputs and who holds them (``--owner``)."""
    owners = parse_owners(args.owner)
    loaded, inputs = load_model_and_inputs(args.model, args.seq, args.input, owners)
    return loaded, inputs, owners


def _plan_only(args) -> None:
    if args.seq is not None or args.input is not None or args.owner is not None:
        raise CliError(f"--seq, --input and --owner choose a model's example inputs, and the plan {args.model} has "
                       f"fixed inputs; leave them out, or give the model instead of the plan")


def _describe(inputs) -> str:
    """``seq 16`` for token ids alone, else every input's shape."""
    if set(inputs) == {"input_ids"}:
        return f"seq {inputs['input_ids'].shape[-1]}"
    return ", ".join(f"{name} {list(value.shape)}" for name, value in inputs.items())


def _print_summary(graph, out=None):
    out = out or sys.stdout
    summary = graph.summary()
    print("ops by kind:       " + ", ".join(f"{k} {v}" for k, v in summary["ops"].items()), file=out)
    print("values by visibility: " + ", ".join(f"{k} {v}" for k, v in summary["visibility"].items()), file=out)


def cmd_compile(args) -> int:
    is_plan(args.model, plans=False)
    loaded, inputs, owners = _load(args)
    start = time.perf_counter()
    plan = compile_model(loaded, inputs, args.approx, args.overflow_check, owners)
    seconds = time.perf_counter() - start
    plan.info["model"] = args.model
    if "input_ids" in inputs:
        plan.info["seq_len"] = int(inputs["input_ids"].shape[-1])
    plan.save(args.output)
    print(f"compiled {args.model} ({_describe(inputs)}) in {seconds:.2f} s -> {args.output}")
    _print_summary(plan.graph)
    return 0


def cmd_dump(args) -> int:
    from .frontend import trace
    from .passes import PASSES, SECURE_PIPELINE, run_pipeline
    if is_plan(args.model):
        if args.after:
            raise CliError("--after needs a model, not a compiled plan (a plan holds only the final IR)")
        _plan_only(args)
        graph = load_plan(args.model).graph
    else:
        known = ("import",) + SECURE_PIPELINE
        if args.after and args.after not in known:
            extra = " (it is registered but not in the pipeline)" if args.after in PASSES else ""
            raise CliError(f"unknown pass {args.after!r}{extra}; choose one of: {', '.join(known)}")
        loaded, inputs, owners = _load(args)
        with step(f"tracing {args.model} with torch.export"):
            graph = trace(loaded.model, inputs, owners=owners)
        if args.after != "import":
            names = SECURE_PIPELINE[:SECURE_PIPELINE.index(args.after) + 1] if args.after else SECURE_PIPELINE
            with step(f"running {len(names)} passes"):
                graph = run_pipeline(graph, names)
    if args.summary:
        _print_summary(graph)
    else:
        sys.stdout.write(graph.dump())
    return 0


def _agreement(loaded, inputs, owners=None) -> list[tuple[str, tuple, float]]:
    """(output name, shape, max abs error) of the float64 interpreter on the analysed graph against torch."""
    import mpcc
    from .frontend import trace
    from .passes import DEFAULT_PIPELINE, run_pipeline
    with step(f"tracing {loaded.name} with torch.export and running the analysis passes"):
        # the analysis passes only: before fusion and lowering
        graph = run_pipeline(trace(loaded.model, inputs, owners=owners), DEFAULT_PIPELINE)
    expected = reference(loaded, inputs)
    with step("running the float64 interpreter"):
        outputs = mpcc.interpret(graph, inputs, loaded.model.state_dict())
    return [(name, tuple(o.shape), float((o - e).abs().max()))
            for name, o, e in zip(graph.outputs, outputs, expected)]


def cmd_interpret(args) -> int:
    is_plan(args.model, plans=False)
    loaded, inputs, owners = _load(args)
    worst = 0.0
    for name, shape, error in _agreement(loaded, inputs, owners):
        worst = max(worst, error)
        print(f"output %{name} {list(shape)}: max |interpreter - torch| = {error:.2e}")
    return verdict(worst, INTERPRET_TOLERANCE)


def cmd_run(args) -> int:
    import mpcc
    check_backend(args.backend)
    if args.connect is not None:   # the client party of a server (mpcc serve)
        from .cli_net import run_client
        return run_client(args)
    for option in ("certs", "dealer", "material", "net", "save"):
        if getattr(args, option) is not None:
            raise CliError(f"--{option} goes with --connect (running as the client of a server)")
    if is_plan(args.model):  # a compiled plan: weights from the model it names, inputs with its shapes
        plan = load_plan(args.model)
        if args.owner is not None:
            held = ", ".join(f"{name}={owner}" for name, owner in plan.inputs.items())
            raise CliError(f"the plan {args.model} fixes who holds each input ({held}); --owner needs a model")
        source = args.weights or plan.info.get("model")
        if not source:
            raise CliError(f"{args.model} does not name its model; give --weights PRESET_OR_DIRECTORY")
        loaded, inputs = load_model_and_inputs(source, args.seq, args.input, plan=plan)
    else:
        loaded, inputs, owners = _load(args)
        plan = compile_model(loaded, inputs, args.approx, args.overflow_check, owners)
    outputs, stats = mpcc.run(plan, inputs, loaded.model.state_dict(), backend=args.backend)  # its own progress bar
    worst = _report_secure(loaded, inputs, plan, outputs)
    print(stats.summary())
    code = verdict(worst, SECURE_TOLERANCE, "float64 torch" if plan.approx == "exact" else
                   f"the plan's plaintext meaning (approx {plan.approx})")
    if args.json:
        import json
        print(json.dumps(stats.as_dict()))
    return code


def _report_secure(loaded, inputs, plan, outputs) -> float:
    """Errors per output against torch; with substitutes (approx) the worst error
    returned is against the plan's own plaintext meaning, which they define."""
    import mpcc
    expected = reference(loaded, inputs)
    meaning = expected if plan.approx == "exact" else mpcc.interpret(plan, inputs, loaded.model.state_dict())
    worst = 0.0
    for name, got, want, own in zip(plan.graph.outputs, outputs, expected, meaning):
        error = float((got - want).abs().max())
        worst = max(worst, float((got - own).abs().max()))
        if plan.approx == "exact":
            print(f"output %{name} {list(got.shape)}: max |secure - torch| = {error:.2e}")
        else:
            print(f"output %{name} {list(got.shape)}: max |secure - plan| = {float((got - own).abs().max()):.2e}, "
                  f"|secure - torch| = {error:.2e} (the substitutes change the function)")
        if got.dim() == 3 and got.shape[-1] == getattr(loaded.model.config, "vocab_size", -1):
            print(f"  next token (greedy): secure {int(got[0, -1].argmax())}, torch {int(want[0, -1].argmax())}")
    return worst


def cmd_cost(args) -> int:
    from .runtime.cost_report import PLOT_INSTALL_HINT
    from .runtime.networks import parse_network
    network = parse_network(args.network)   # a ValueError naming the valid forms, before any work
    if args.plot:   # fail before the compile, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError(f"--plot: {PLOT_INSTALL_HINT}") from None
    if is_plan(args.model):
        _plan_only(args)
        plan = load_plan(args.model)
    else:
        loaded, inputs, owners = _load(args)
        plan = compile_model(loaded, inputs, owners=owners)
    cost = plan.cost(network)
    print(cost.summary())
    if args.plot:
        cost.plot(args.plot)
        print(f"plot -> {args.plot}")
    return 0


def cmd_bench(args) -> int:
    import torch
    from .bench import bert_layer, measure_model, report
    check_backend(args.backend)
    with step("building a BERT-base encoder layer"):
        layer = bert_layer()
    rows = []
    for seq in args.seq:
        x = torch.randn(1, seq, 768, generator=torch.Generator().manual_seed(1))
        rows.append(measure_model(f"bert-layer seq {seq}", layer, {"hidden_states": x}, repeats=args.repeats,
                                  backend=args.backend, step=lambda what, seq=seq: step(f"seq {seq}: {what}")))
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
    import mpcc
    loaded, inputs = load_model_and_inputs("tiny-bert")
    start = time.perf_counter()
    plan = compile_model(loaded, inputs)
    print(f"== mpcc demo: compiled tiny-bert (seq {inputs['input_ids'].shape[-1]}) in "
          f"{time.perf_counter() - start:.2f} s")
    _print_summary(plan.graph)
    print("== plaintext interpreter (float64) against torch:")
    agreement = _agreement(loaded, inputs)
    for name, shape, error in agreement:
        print(f"output %{name} {list(shape)}: max abs error {error:.2e}")
    code = verdict(max(error for *_, error in agreement), INTERPRET_TOLERANCE)
    print("== cost model:")
    print(plan.cost().summary())
    print("== secure two-party run (client and server threads, dealer included) against torch:")
    outputs, stats = mpcc.run(plan, inputs, loaded.model.state_dict())
    worst = _report_secure(loaded, inputs, plan, outputs)
    print(stats.summary())
    return verdict(worst, SECURE_TOLERANCE) or code


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` where there is a value to show; a None default is described in the help text."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """Usage mistakes in one line, like every other error of the command."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .api import APPROXIMATIONS
    from .cli_net import add_client_options, add_commands
    from .inputs import INPUTS, TENSOR_FILES
    from .models import PRESETS
    from .passes import SECURE_PIPELINE
    parser = _Parser(prog="mpcc", description="Compile PyTorch transformers to two-party MPC.",
                     formatter_class=_HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, text, run):
        p = sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)
        p.set_defaults(run=run)
        return p

    def model_args(p, plans, plan_seq=""):
        what = f"preset ({', '.join(PRESETS)})" + (", Hugging Face model directory or plan file (from mpcc compile)"
                                                  if plans else " or Hugging Face model directory")
        p.add_argument("model", help=what)
        p.add_argument("--seq", type=_positive_int, default=None,
                       help="length of random example token ids (default: the preset's, 16 for tiny-bert and "
                            "tiny-gpt2, 128 for the others" + plan_seq + ")")
        p.add_argument("--input", action="append", default=None, metavar="[NAME=]VALUE",
                       help=f"an input instead of a made-up one, repeatable: NAME is input_ids (the default) or "
                            f"{', '.join(list(INPUTS)[1:])}, as the model's forward takes them; VALUE is token ids "
                            f"like '1 2 3', text (needs a tokenizer), 'random' (real inputs) or a "
                            f"{', '.join(TENSOR_FILES)} file")
        p.add_argument("--owner", action="append", default=None, metavar="NAME=" + "|".join(OWNER_CHOICES),
                       help="who holds input NAME, repeatable (default: the client); an input named here and not "
                            "given is made up" + (" (a plan keeps its own)" if plans else ""))

    backends = ["cpu", "limb", "cuda"]
    backend_help = "ring arithmetic: cpu (int64), limb (the GPU algorithm on CPU) or cuda (needs a GPU)"
    overflow_help = ("check under MPC that values stay in the protocols' domains and fail instead of giving wrong "
                     "outputs (reveals one bit; about 2x the bytes)")

    p = command("compile", "trace and compile a model into a plan file", cmd_compile)
    model_args(p, plans=False)
    p.add_argument("-o", "--output", required=True, help="plan file to write")
    p.add_argument("--approx", default="exact", choices=sorted(APPROXIMATIONS),
                   help="approximation preset: which substitutes replace the non-linear functions")
    p.add_argument("--overflow-check", action="store_true", help=overflow_help)

    p = command("dump", "print the IR of a model (after a pass) or of a plan file", cmd_dump)
    model_args(p, plans=True)
    p.add_argument("--after", default=None, metavar="PASS",
                   help="stop after this pass, one of: import (the raw import), " + ", ".join(SECURE_PIPELINE)
                        + " (default: all of them)")
    p.add_argument("--summary", action="store_true", help="print op and visibility counts only")

    p = command("interpret", "run the IR in plaintext float64 and compare with torch", cmd_interpret)
    model_args(p, plans=False)

    p = command("run", "compile (or load a plan file) and run securely (client and server in this process), "
                       "compare with torch", cmd_run)
    model_args(p, plans=True, plan_seq="; for a plan file, the length it was compiled for")
    p.add_argument("--weights", default=None, help="for a plan file: preset or model directory holding the weights "
                                                     "(default: the model the plan was compiled from)")
    p.add_argument("--backend", default="cpu", choices=backends, help=backend_help)
    p.add_argument("--overflow-check", action="store_true", help=overflow_help + " (a plan file keeps its own setting)")
    p.add_argument("--approx", default="exact", choices=sorted(APPROXIMATIONS),
                   help="approximation preset (a plan file keeps its own); with substitutes the verdict is against "
                        "the plan's plaintext meaning, and the error against torch is shown beside it")
    p.add_argument("--json", action="store_true", help="also print the stats as JSON")
    add_client_options(p)

    p = command("cost", "rounds, bytes and dealer material of a model or plan file", cmd_cost)
    model_args(p, plans=True)
    p.add_argument("--network", default="lan", metavar="lan|wan|local|BANDWIDTH,LATENCY",
                   help="network the time estimate assumes: lan (1 Gbps, 0.5 ms one-way), wan (100 Mbps, 40 ms), "
                        "local (none), or e.g. 1Gbps,0.5ms or 1e9,0.0005 (bits per second, seconds)")
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="also draw where rounds and bytes go, by layer and op family (needs matplotlib: "
                        "pip install 'mpcc[plot]')")

    p = command("bench", "one BERT-base encoder layer, secure, timed (see benchmarks/)", cmd_bench)
    p.add_argument("--seq", type=_positive_int, nargs="+", default=[128], help="sequence lengths to measure")
    p.add_argument("--repeats", type=_positive_int, default=2,
                   help="secure runs per length in one session; the fastest after the first is reported")
    p.add_argument("--backend", default="cpu", choices=backends, help=backend_help)

    p = command("ops", "list the IR ops (or, with --aten, the ATen ops mpcc imports)", cmd_ops)
    p.add_argument("--aten", action="store_true", help="list the ATen ops the frontend imports instead")

    command("demo", "compile tiny-bert, interpret it and run it securely, each checked against torch", cmd_demo)
    add_commands(command, backends, backend_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 for every usage or input error)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:   # --help, or a usage error already printed in one line
        return stop.code if isinstance(stop.code, int) else 2
    from .frontend import TraceError
    from .interpreter import InterpretError
    from .models import ModelLoadError
    from .plan import PlanFormatError
    from .runtime import RunError
    from .runtime.context import ProtocolError
    from .runtime.executor import ExecutionError
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except (CliError, TraceError, InterpretError, ModelLoadError, PlanFormatError, RunError, ValueError,
            OSError, ProtocolError, ExecutionError) as error:   # (the last two: a peer that failed or went away)
        print(f"mpcc {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
