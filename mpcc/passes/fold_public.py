"""Evaluate public subgraphs (masks, position ids, shape arithmetic) once, at
compile time, so that no MPC work is spent on values everyone knows. Values
that depend on a public *input* stay: both parties compute them at run time.

    %arange = arange(start=0, end=8, ...) : int[8] public
    %add = add(%arange, other=0, alpha=1) : int[8] public
      ->  %add = const(value=<blob>) : int[8] public
"""
from __future__ import annotations

import torch

from ..ir import Graph, dtype_of_kind
from ..ops import get_op
from .registry import register_pass

__all__ = ["fold_public"]


@register_pass("fold_public")
def fold_public(graph: Graph) -> Graph:
    values: dict[str, torch.Tensor] = {}
    nodes = []
    with torch.no_grad():
        for node in graph.nodes:
            op = get_op(node.op)
            if node.type.vis != "public" or op.source:
                nodes.append(node)
                continue
            if node.op == "const":
                values[node.name] = node.attrs["value"]
                nodes.append(node)
                continue
            if op.family == "create":
                operands = [torch.empty(graph[o].type.shape, dtype=dtype_of_kind(graph[o].type.kind))
                            for o in node.operands]
            elif all(o in values for o in node.operands):
                operands = [values[o] for o in node.operands]
            else:  # depends on a public input: known only at run time, computed by both parties
                nodes.append(node)
                continue
            value = op.evaluate(operands, node.attrs).to(dtype_of_kind(node.type.kind)).contiguous()
            values[node.name] = value
            nodes.append(node.with_(op="const", operands=(), attrs={"value": value}))
    return graph.replace_nodes(nodes)
