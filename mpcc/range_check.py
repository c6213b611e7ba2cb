"""The plaintext range check: interpret a plan in float64 and report every value
outside its protocol's domain (the table is ``mpcc.ranges``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .interpreter import interpret
from .ir import Node
from .ops import get_op
from .ranges import Check, Domain, _checks, _num, _out, _ring_bound, _symmetric, default_input_ranges

__all__ = ["check_ranges", "RangeReport", "RangeProblem"]


@dataclass(frozen=True)
class RangeProblem:
    """A node whose ``domain.what`` took values in [seen_low, seen_high], outside ``domain``."""
    node: str
    origin: str
    domain: Domain
    seen_low: float
    seen_high: float

    def __str__(self) -> str:
        where = f"%{self.node} ({self.origin or '<top>'})"
        d = self.domain
        if not (math.isfinite(self.seen_low) and math.isfinite(self.seen_high)):
            return f"{where}: {d.what} contains NaN or inf"
        if d.low == -d.high:
            peak = max(-self.seen_low, self.seen_high)
            return (f"{where}: {d.what} max |x| {_num(peak)} exceeds {d.limit} {_num(d.high)} "
                    f"by {_factor(peak / d.high)}")
        span = f"{d.limit} [{_num(d.low)}, {_num(d.high)})"
        above, below = self.seen_high >= d.high, self.seen_low < d.low
        if above and below:
            seen = f"[{_num(self.seen_low)}, {_num(self.seen_high)}]"
            return f"{where}: {d.what} spans {seen}, beyond both ends of {span}"
        if above:
            return f"{where}: {d.what} max {_num(self.seen_high)} is above {span} by {_margin(self.seen_high, d.high)}"
        return f"{where}: {d.what} min {_num(self.seen_low)} is below {span} by {_margin(self.seen_low, d.low)}"


@dataclass
class RangeReport:
    """What ``check_ranges`` found: ``ok``, ``problems`` (one per node and value), ``checked`` (values checked)."""
    problems: list[RangeProblem] = field(default_factory=list)
    checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"ok: all {self.checked} checked values lie within their protocols' domains"
        return "\n".join(str(p) for p in self.problems)


def check_ranges(plan, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], *,
                 input_ranges: Mapping[str, tuple[float, float]] | None = None) -> RangeReport:
    """Interpret ``plan`` in float64 and report every value outside its protocol's domain.

    Checks the real inputs against ``input_ranges`` (default:
    ``default_input_ranges``), the weights against the weight limit, every
    operand and intermediate value in ``DOMAIN_RULES`` and every shared real
    value against the ring. Raises only where the plan cannot be interpreted
    (missing inputs or weights, wrong shapes).

    Args:
        plan: a compiled ``Plan`` (its lowered graph and ``frac_bits``).
        inputs: the model inputs by name.
        weights: the server's weights (``state_dict()``; numpy arrays accepted).
        input_ranges: closed ``(low, high)`` per input, e.g. the ones the plan stores.

    Example:
        >>> import torch, mpcc
        >>> from mpcc.ranges import check_ranges
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU())
        >>> plan = mpcc.compile(model, (torch.zeros(1, 4),))
        >>> check_ranges(plan, {"input": torch.ones(1, 4)}, model.state_dict()).ok
        True
        >>> print(check_ranges(plan, {"input": torch.full((1, 4), 1e5)}, model.state_dict()))  # doctest: +ELLIPSIS
        %input (<top>): input max |x| 1e5 exceeds its input range 3.28e4 by 3.05x
        %gelu (1): input max |x| ... exceeds the comparison domain 3.28e4 by ...x
    """
    graph, frac_bits = plan.graph, plan.frac_bits
    ranges = default_input_ranges(graph, frac_bits) if input_ranges is None else dict(input_ranges)
    ring = _ring_bound(frac_bits)
    report = RangeReport()

    def on_node(node: Node, operands: list, value: torch.Tensor) -> None:
        checks = _checks(graph, node, frac_bits, ranges)
        if node.type.vis == "shared" and node.type.kind == "real":
            checks.append(Check(_symmetric(ring, "value", "the ring"), _out))
        if not checks:
            return
        args = dict(zip(get_op(node.op).params, get_op(node.op).bind(operands, node.attrs))) if operands else {}
        for check in checks:
            report.checked += 1
            problem = _problem(node, check.domain, check.probe(args, value))
            if problem is not None:
                report.problems.append(problem)

    interpret(graph, inputs, weights, on_node=on_node)
    return report


def _problem(node: Node, domain: Domain, values: torch.Tensor) -> RangeProblem | None:
    if not values.numel():
        return None
    low, high = (float(v) for v in torch.aminmax(values.detach().to(torch.float64)))
    if math.isfinite(low) and math.isfinite(high) and domain.low <= low and high < domain.high:
        return None
    return RangeProblem(node.name, node.origin, domain, low, high)


def _factor(ratio: float) -> str:
    return f"{ratio:.6f}x" if ratio < 1.005 else f"{_num(ratio)}x"   # just past the bound: show how far


def _margin(value: float, bound: float) -> str:
    if value * bound > 0:
        return _factor(max(abs(value / bound), abs(bound / value)))
    return _num(abs(value - bound))
