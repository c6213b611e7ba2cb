"""Plaintext interpreter: runs the IR in float64 with each op's ``reference``.

This is the meaning every later stage (approximations, lowering, the secure
runtime) is tested against.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch

from .ir import Graph, Node, dtype_of_kind
from .ops import get_op
from .ops.arith import RING_SHIFT_LIMIT

__all__ = ["interpret", "InterpretError", "check_inputs", "check_weights", "normalize_weights", "weight_limit"]


class InterpretError(RuntimeError):
    """Bad inputs or weights, or an op that failed; names the node and its module."""


def check_inputs(graph: Graph, inputs: Mapping[str, torch.Tensor],
                 ranges: Mapping[str, tuple[float, float]] | None = None, names=None) -> None:
    """Every declared input present, with its declared shape; nothing extra.

    Token ids (``int`` inputs) given as floats must be whole numbers: the
    interpreter and the runtime would otherwise truncate 3.5 to 3 silently.
    ``ranges``: ``{input name: (low, high)}``, closed intervals; an input
    with a value outside its range, or NaN or inf, is refused (the plan's
    protocols are exact only inside it: ``mpcc.ranges.default_input_ranges``).

    Example:
        >>> import torch, mpcc
        >>> from mpcc.interpreter import check_inputs
        >>> g = mpcc.trace(torch.nn.Linear(2, 2), (torch.zeros(1, 2),))
        >>> name = g.inputs[0].name
        >>> check_inputs(g, {name: torch.full((1, 2), 7.0)}, ranges={name: (-4.0, 4.0)})
        Traceback (most recent call last):
        ...
        mpcc.interpreter.InterpretError: input 'input' has values in [7, 7], outside its range [-4, 4] ...
    """
    declared = {n.name: n for n in graph.inputs if names is None or n.name in names}   # names: check only these
    missing = sorted(set(declared) - set(inputs))
    extra = sorted(set(inputs) - set(declared))
    if missing or extra:
        raise InterpretError(f"inputs do not match the graph: missing {missing}, unexpected {extra}; "
                             f"expected {sorted(declared)}")
    unknown = sorted(set(ranges or {}) - {n.name for n in graph.inputs})
    if unknown:
        raise InterpretError(f"ranges name inputs the graph does not have: {unknown}; inputs are {sorted(declared)}")
    for name, node in declared.items():
        value = inputs[name]
        if not isinstance(value, torch.Tensor):
            raise InterpretError(f"input {name!r} must be a tensor, not {type(value).__name__}")
        if tuple(value.shape) != node.type.shape:
            raise InterpretError(f"input {name!r} has shape {tuple(value.shape)}, the graph was traced with "
                                 f"{node.type.shape}")
        if node.type.kind == "int" and value.is_floating_point():
            _check_whole(name, value)
        if ranges and name in ranges:
            _check_range(name, value, *ranges[name])


def _check_whole(name: str, value: torch.Tensor) -> None:
    bad = ~torch.isfinite(value) | (value != torch.round(value))
    if bool(bad.any()):
        example = float(value[bad].reshape(-1)[0])
        raise InterpretError(f"input {name!r}: token ids must be whole numbers (got {example:g})")


def _check_range(name: str, value: torch.Tensor, low: float, high: float) -> None:
    if not value.numel():
        return
    seen_low, seen_high = (float(v) for v in torch.aminmax(value.detach().to(torch.float64)))
    if not (math.isfinite(seen_low) and math.isfinite(seen_high)):
        raise InterpretError(f"input {name!r} contains NaN or inf; its range is [{low:g}, {high:g}]")
    if seen_low < low or seen_high > high:
        raise InterpretError(f"input {name!r} has values in [{seen_low:.6g}, {seen_high:.6g}], outside its range "
                             f"[{low:g}, {high:g}] (the plan's protocols are exact only inside it; "
                             f"mpcc.check_ranges tells which node would fail)")


def weight_limit(frac_bits: int) -> float:
    """The largest weight magnitude a session accepts: 2^(62 - 2f - 1) (2^29 at f = 16).

    A product of two reals carries 2f fractional bits and is truncated,
    which needs |x * w| < 2^(62 - 2f) (``trunc``); at this limit a weight
    times any activation of magnitude 2 or more overflows, so such a weight
    cannot be part of a working model. Smaller weights can still drive an
    activation out of a protocol's domain; ``mpcc.check_ranges`` finds those.
    """
    return 2.0 ** (RING_SHIFT_LIMIT - 2 * frac_bits - 1)


def normalize_weights(weights: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The weights as a dict of torch tensors: numpy arrays (and array-likes)
    converted without a copy where possible, torch tensors kept as they are.

    Example:
        >>> import numpy as np
        >>> normalize_weights({"w": np.ones(2, dtype=np.float32)})["w"]
        tensor([1., 1.])
    """
    out = {}
    for key, value in weights.items():
        if isinstance(value, torch.Tensor):
            out[key] = value
            continue
        try:
            if isinstance(value, np.ndarray) and not value.flags.writeable:
                value = value.copy()  # torch refuses to share memory it could write to
            out[key] = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InterpretError(f"weight {key!r} is a {type(value).__name__}, which is not a tensor or an array "
                                 f"of numbers ({error})") from None
    return out


def _weight_value_problem(key: str, value: torch.Tensor, limit: float, frac_bits: int) -> str | None:
    if not value.is_floating_point() or not value.numel():
        return None
    low, high = (float(v) for v in torch.aminmax(value.detach()))
    if math.isnan(low) or math.isnan(high):
        return f"weight {key!r} contains NaN"
    peak = max(-low, high)
    if math.isinf(peak):
        return f"weight {key!r} contains inf"
    if peak >= limit:
        return (f"weight {key!r} has max |value| {peak:.4g}, at or above the limit {limit:.4g} = "
                f"2^{int(math.log2(limit))} for {frac_bits} fractional bits (its product with any activation "
                f"of magnitude 2 would overflow the truncation)")
    return None


def _op_weight_problems(graph: Graph, weights: Mapping[str, torch.Tensor], frac_bits: int) -> list[str]:
    """Weights above the narrower limit an op states for them (``extra["weight_limits"]``:
    param -> limit(frac_bits), e.g. the lookup's ring)."""
    problems = []
    for node in graph.nodes:
        op = get_op(node.op)
        limits = op.extra.get("weight_limits", {})
        named = dict(zip(op.operand_params(node.attrs), node.operands)) if limits else {}
        for param, limit_of in limits.items():
            source = graph[named[param]] if param in named else None
            if source is None or source.op != "param" or source.attrs["key"] not in weights:
                continue
            value, limit = weights[source.attrs["key"]], limit_of(frac_bits)
            peak = float(value.detach().abs().max()) if value.numel() else 0.0
            if peak >= limit:
                problems.append(f"weight {source.attrs['key']!r} has max |value| {peak:.4g}, at or above {limit:.4g}, "
                                f"the most {node.op} (%{node.name}) holds")
    return problems


def check_weights(graph: Graph, weights: Mapping[str, torch.Tensor], frac_bits: int | None = None) -> None:
    """Every param the graph reads is in ``weights`` with the right shape; with
    ``frac_bits``, also finite and below ``weight_limit(frac_bits)`` in magnitude.

    Problems are collected and raised together (the first five and a count).
    Numpy arrays are accepted (see ``normalize_weights``).
    """
    weights = normalize_weights(weights)
    limit = None if frac_bits is None else weight_limit(frac_bits)
    problems = []
    for node in graph.params:
        key = node.attrs["key"]
        if key not in weights:
            problems.append(f"missing weight {key!r}")
        elif tuple(weights[key].shape) != node.type.shape:
            problems.append(f"weight {key!r} has shape {tuple(weights[key].shape)}, expected {node.type.shape}")
        elif limit is not None and node.type.kind == "real":
            problem = _weight_value_problem(key, weights[key], limit, frac_bits)
            if problem:
                problems.append(problem)
    if limit is not None:
        problems += _op_weight_problems(graph, weights, frac_bits)
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise InterpretError(f"{len(problems)} problem(s) with the weights: " + "; ".join(problems[:5]) + more)


def _run_node(node: Node, env: dict, inputs, weights) -> torch.Tensor:
    dtype = dtype_of_kind(node.type.kind)
    if node.op == "input":
        return inputs[node.name].to(dtype)
    if node.op == "param":
        return weights[node.attrs["key"]].detach().to(dtype)
    op = get_op(node.op)
    result = op.evaluate([env[o] for o in node.operands], node.attrs)
    return result.to(dtype)


def interpret(graph: Graph, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], *,
              on_node: Callable[[Node, list, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Run ``graph`` in float64 and return its outputs in order.

    Args:
        graph: an IR graph (from ``mpcc.trace`` or after any passes).
        inputs: the model inputs by name, e.g. ``{"input_ids": ids}``.
        weights: the model's ``state_dict()`` (keys as the params name them;
            numpy arrays are accepted).
        on_node: called as ``on_node(node, operand_values, value)`` after
            each node (``mpcc.ranges.check_ranges`` checks domains with it).

    Example:
        >>> import torch, mpcc
        >>> layer = torch.nn.Linear(4, 2)
        >>> x = torch.ones(1, 4)
        >>> g = mpcc.trace(layer, (x,))
        >>> out, = mpcc.interpret(g, {g.inputs[0].name: x}, layer.state_dict())
        >>> bool(torch.allclose(out.float(), layer(x)))
        True
    """
    graph = getattr(graph, "graph", graph)   # a Plan works too
    check_inputs(graph, inputs)
    weights = normalize_weights(weights)
    check_weights(graph, weights)
    env: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for node in graph.nodes:
            try:
                value = _run_node(node, env, inputs, weights)
            except Exception as error:
                raise InterpretError(f"%{node.name} = {node.op}(...) in {node.origin or '<top>'} failed: "
                                     f"{type(error).__name__}: {error}") from error
            if tuple(value.shape) != node.type.shape:
                raise InterpretError(f"%{node.name} = {node.op}(...) in {node.origin or '<top>'} gave shape "
                                     f"{tuple(value.shape)}, its type says {node.type.shape}")
            env[node.name] = value
            if on_node is not None:
                on_node(node, [env[o] for o in node.operands], value)
    return [env[name] for name in graph.outputs]
