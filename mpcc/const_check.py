"""Compile-time range check of public constants: a constant that an MPC op encodes as a
fixed-point number must fit the ring (finite, |x| < 2^(62 - f)); otherwise the plan is
refused here, naming the node, instead of failing (or being wrong) at run time.

Masks are the exception the passes already handled: ``fuse_masked_attention`` turns
``finfo.min`` and ``-inf`` entries into exclusions, and an sdpa mask's excluded
entries (at or below -1e4) are never encoded.
"""
from __future__ import annotations

import math

import torch

from .ir import Graph, IRError
from .ops import get_op
from .ops.attention import finite_part

__all__ = ["ConstantRangeError", "check_constants"]

NOT_ENCODED = {"condition", "mask"}   # read as 0/1, never as numbers
SCALAR_ATTRS = {"mpc.add_public": "value", "mpc.mul_public": "value", "mpc.masked_fill_public": "value",
                "mpc.mul_scalar": "value"}


class ConstantRangeError(IRError):
    """A public constant does not fit the fixed-point range of the plan."""


def _largest(value: torch.Tensor) -> float:
    if not value.is_floating_point() or not value.numel():
        return float(value.abs().max()) if value.numel() else 0.0
    return float("inf") if not bool(value.isfinite().all()) else float(value.abs().max())


def _never_used(graph: Graph, node, param: str) -> bool:
    """Whether a fill never reaches the output: a constant mask that selects nothing
    (DeBERTa's ``masked_fill(finfo.min)`` under an all-ones attention mask)."""
    named = dict(zip(get_op(node.op).operand_params(node.attrs), node.operands))
    if node.op == "mpc.masked_fill_public" and param == "value":
        selector, unused_when = named.get("mask"), False
    elif node.op == "mpc.where_public" and param == "other":
        selector, unused_when = named.get("condition"), True
    else:
        return False
    fill = node.attrs.get(param)
    if selector is None or graph[selector].op != "const" or \
            (isinstance(fill, float) and not math.isfinite(fill)):   # the protocol computes mask * fill: 0 * inf
        return False
    return bool((graph[selector].attrs["value"].bool() == unused_when).all())


def check_constants(graph: Graph, frac_bits: int) -> None:
    """Raise ``ConstantRangeError`` for the first constant an MPC op would encode out of range."""
    limit = 2.0 ** (62 - frac_bits)
    for node in graph.nodes:
        if not node.op.startswith("mpc."):
            continue
        op = get_op(node.op)
        where = f"%{node.name} = {node.op}(...) in {node.origin or '<top>'}"
        for param, operand in zip(op.operand_params(node.attrs), node.operands):
            source = graph[operand]
            encoded_mask = param == "mask" and node.op == "mpc.softmax_masked"
            if source.op != "const" or (param in NOT_ENCODED and not encoded_mask) or param in op.index_params or \
                    source.type.kind != "real" or _never_used(graph, node, param):
                continue
            value = source.attrs["value"]
            if param in ("attn_mask", "mask") and node.op in ("mpc.sdpa", "mpc.softmax_masked"):
                # excluded entries are a keep mask, not numbers; the finite part is encoded
                value = finite_part(value)
            peak = _largest(value)
            if not peak < limit:
                raise ConstantRangeError(
                    f"{where} reads the constant %{operand} (magnitude {peak:.3g}) as a fixed-point number, "
                    f"which must be finite and below 2^{62 - frac_bits} = {limit:.3g}; a mask constant such as "
                    f"finfo.min belongs in an attention mask or masked_fill before a softmax")
        attr = SCALAR_ATTRS.get(node.op)
        value = node.attrs.get(attr) if attr else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                not (math.isfinite(value) and abs(value) < limit) and not _never_used(graph, node, attr):
            raise ConstantRangeError(f"{where}: its {attr} {value:.3g} does not fit fixed point "
                                     f"(finite, below 2^{62 - frac_bits} = {limit:.3g})")
