"""Turn a lookup by a party's private indices into that party's local one-hot
times the table, so that no index is ever secret to the party holding the
table. A lookup by public indices stays a (local) gather.

    %emb = embedding(%p_wte, %input_ids, ...) : real[1,8,32] shared
      ->  %emb_one_hot = one_hot(%input_ids, num_classes=100) : real[1,8,100] client
          %emb = matmul(%emb_one_hot, %p_wte) : real[1,8,32] shared
"""
from __future__ import annotations

from ..ir import Graph, Node, TensorType
from .registry import register_pass
from .names import fresh_name

__all__ = ["client_one_hot_embedding"]


@register_pass("client_one_hot_embedding")
def client_one_hot_embedding(graph: Graph) -> Graph:
    taken = {n.name for n in graph.nodes}
    nodes = []
    for node in graph.nodes:
        if node.op != "embedding":
            nodes.append(node)
            continue
        table, indices = (graph[o] for o in node.operands)
        owner = indices.type.vis
        if owner in ("public", "shared", "?") or table.type.vis in ("public", owner):
            nodes.append(node)  # public or party-local lookup; a shared index is caught by check_no_secret_index
            continue
        vocab = table.type.shape[0]
        one_hot_name = fresh_name(f"{node.name}_one_hot", taken)
        one_hot_type = TensorType(indices.type.shape + (vocab,), "real", owner)
        nodes.append(Node(one_hot_name, "one_hot", (indices.name,), {"num_classes": vocab}, one_hot_type, node.origin))
        nodes.append(Node(node.name, "matmul", (one_hot_name, table.name), {}, node.type, node.origin))
    return graph.replace_nodes(nodes)
