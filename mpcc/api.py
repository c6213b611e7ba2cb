"""The public Python API: trace, compile, interpret, load."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .const_check import check_constants
from .frontend import trace
from .interpreter import interpret
from .passes import run_pipeline, secure_pipeline
from .passes.approximate import PRESETS, approx_label
from .plan import Plan, load
from .runtime import Emulator, Session, emulate, run

__all__ = ["compile", "trace", "interpret", "load", "run", "Session", "APPROXIMATIONS", "emulate", "Emulator"]

APPROXIMATIONS = PRESETS   # preset name -> substitute per op family


def compile(model: torch.nn.Module, example_inputs, *, approx: str | Mapping[str, str] = "exact",
            owners: Mapping[str, str] | None = None, passes: Sequence[str] | None = None,
            frac_bits: int = 16, overflow_check: bool = False) -> Plan:
    """Trace ``model`` and run the compiler pipeline.

    Args:
        model: the PyTorch model (eval mode is used while tracing).
        example_inputs: dict of keyword tensors or tuple of positional ones.
        approx: which substitutes replace the non-linear functions: a preset
            (``"exact"`` keeps the model's functions; ``"mpcformer"``, ... see
            ``mpcc.APPROXIMATIONS``) or a dict per op family overriding one,
            ``{"preset": "mpcformer", "gelu": "exact"}``.
        owners: who holds each input (default: the client).
        passes: pass names to run instead of the default pipeline.
        frac_bits: fixed-point fractional bits for the secure runtime.
        overflow_check: every run also checks, under MPC, that the values reaching
            range-limited protocols (comparisons, reciprocal, rsqrt) lie in their
            domains, and fails with ``RangeOverflowError`` instead of returning wrong
            outputs; it reveals one bit (overflow or not) to both parties and costs
            rounds and bytes (``plan.cost()`` counts them). See docs/security.md.

    Example:
        >>> import torch, mpcc
        >>> plan = mpcc.compile(torch.nn.Linear(4, 2), (torch.zeros(1, 4),))
        >>> sorted(plan.graph.summary()["ops"])
        ['input', 'mpc.linear_server', 'mpc.reveal', 'mpc.share', 'param']
    """
    label = approx_label(approx)   # an unknown name raises, listing the valid ones
    names = tuple(secure_pipeline(approx) if passes is None else passes)
    graph = run_pipeline(trace(model, example_inputs, owners=owners), names)
    check_constants(graph, frac_bits)   # a constant fixed point cannot hold: refused here, named
    used = {n.attrs["key"] for n in graph.params}
    unused = sorted(set(model.state_dict()) - used)
    from dataclasses import asdict
    from .ranges import default_input_ranges, domains_of
    ranges = {name: list(bounds) for name, bounds in default_input_ranges(graph, frac_bits).items()}
    domains = {name: [asdict(d) for d in found] for name, found in domains_of(graph, frac_bits).items()}
    info = {"unused_weights": unused, "input_ranges": ranges, "domains": domains}
    if overflow_check:
        info["overflow_check"] = True
    return Plan(graph, label, names, frac_bits, info)
