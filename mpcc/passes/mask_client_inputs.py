"""A client's real input that only wire-taking ops read (linears, products,
attention, LayerNorm...) is shared masked (``mpc.share(masked=True)``): the
client sends x - a once, and no reader sends a mask of its own. BERT's layer
on a client's hidden states: Q, K and V's three messages and LayerNorm's
mask opening become one one-way message.

    %x_shared = mpc.share(%x)  ->  %x_shared = mpc.share(%x, masked=True)

An input that a comparison or another plain-share op reads stays as it is
(there the mask would be a message more, not one fewer), and so does one
with a single reader (a one-hot before the embedding: the same bytes either
way, and the linear's message also carries its weights' once-per-deployment
opening).
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph
from ..ops import get_op
from .registry import register_pass

__all__ = ["mask_client_inputs"]


@register_pass("mask_client_inputs")
def mask_client_inputs(graph: Graph) -> Graph:
    users = graph.users()
    nodes = []
    for node in graph.nodes:
        source = graph[node.operands[0]] if node.op == "mpc.share" else None
        readers = users.get(node.name, [])
        if source is not None and source.type.vis == "client" and source.type.kind == "real" and len(readers) > 1 \
                and node.name not in graph.outputs and all(get_op(graph[r].op).wires for r in readers):
            node = replace(node, attrs={**node.attrs, "masked": True})
        nodes.append(node)
    return Graph(tuple(nodes), graph.outputs)
