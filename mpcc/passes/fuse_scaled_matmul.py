"""A secret matrix product scaled by a power of two (eager attention's
q k^T / sqrt(d) for d = 4^j) becomes one ``mpc.matmul`` whose truncation
shifts j more bits: the scaling's own truncation round disappears.

    %matmul = mpc.matmul(%q, %k_t)  %mul = mpc.mul_scalar(%matmul, value=0.125)
      ->  %mul = mpc.matmul(%q, %k_t, shift=3)
"""
from __future__ import annotations

import math
from dataclasses import replace

from ..ir import Graph
from .registry import register_pass

__all__ = ["fuse_scaled_matmul", "power_of_two_shift"]


MAX_SHIFT = 30   # a truncation by f + j must stay well inside the ring


def power_of_two_shift(value) -> int | None:
    """j when ``value`` is 2^-j for 1 <= j <= MAX_SHIFT, else None."""
    if not isinstance(value, (int, float)) or value <= 0:
        return None
    mantissa, exponent = math.frexp(value)
    return 1 - exponent if mantissa == 0.5 and 1 - MAX_SHIFT <= exponent <= 0 else None


@register_pass("fuse_scaled_matmul")
def fuse_scaled_matmul(graph: Graph) -> Graph:
    users = graph.users()
    fused: dict[str, str] = {}   # the scaling's name -> the matmul it absorbs
    for node in graph.nodes:
        if node.op != "mpc.mul_scalar" or power_of_two_shift(node.attrs.get("value")) is None:
            continue
        (source,) = node.operands
        producer = graph[source]
        if producer.op == "mpc.matmul" and not producer.attrs.get("shift") and users.get(source) == [node.name] \
                and source not in graph.outputs:
            fused[node.name] = source
    replacements = {}
    for name, source in fused.items():
        node, matmul = graph[name], graph[source]
        replacements[name] = (replace(matmul, name=name, attrs={**matmul.attrs, "shift": power_of_two_shift(
            node.attrs["value"])}, type=node.type, origin=node.origin),)
    return graph.fused(fused.values(), replacements)
