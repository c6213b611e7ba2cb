"""Verify that no op reads a secret as an index: an index operand must be
public, or the op must be local to the one party that owns the index.
Changes nothing; raises ``SecretIndexError`` naming the node and module.
"""
from __future__ import annotations

from ..ir import Graph, IRError
from ..ops import get_op
from .registry import register_pass

__all__ = ["check_no_secret_index", "SecretIndexError"]


class SecretIndexError(IRError):
    """An op would need the value of a secret index."""


@register_pass("check_no_secret_index")
def check_no_secret_index(graph: Graph) -> Graph:
    for node in graph.nodes:
        op = get_op(node.op)
        if not op.index_params:
            continue
        for operand, param in zip(node.operands, op.operand_params(node.attrs)):
            if param not in op.index_params:
                continue
            vis = graph[operand].type.vis
            local = vis in ("client", "server") and node.type.vis == vis
            if vis != "public" and not local:
                raise SecretIndexError(
                    f"%{node.name} = {node.op}(...) in {node.origin or '<top>'} reads {vis} value %{operand} "
                    f"as its {param!r}; an index must be public or owned by the party that holds the data")
    return graph
