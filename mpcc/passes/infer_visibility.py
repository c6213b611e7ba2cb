"""Give every value a visibility: who may see it in the clear.

Inputs are their owner's, params the server's, constants public; an op's
result is visible to whoever sees all its operands (``shared`` when the
client and the server each hold one). Creation ops read only shapes, so their
results are public.

    %mul = mul(%input_ids_f, %c) : real[1,8] ?    ->    ... : real[1,8] client
"""
from __future__ import annotations

from ..ir import Graph, join_visibility
from ..ops import get_op
from .registry import register_pass

__all__ = ["infer_visibility"]


@register_pass("infer_visibility")
def infer_visibility(graph: Graph) -> Graph:
    vis: dict[str, str] = {}
    nodes = []
    for node in graph.nodes:
        if node.op == "input":
            value = node.attrs["owner"]
        elif node.op == "param":
            value = "server"
        elif node.op == "const" or get_op(node.op).family == "create":
            value = "public"
        else:
            value = join_visibility(vis[o] for o in node.operands)
        vis[node.name] = value
        nodes.append(node if node.type.vis == value else node.with_(type=node.type.__class__(
            node.type.shape, node.type.kind, value)))
    return graph.replace_nodes(nodes)
