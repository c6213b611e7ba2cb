"""Drop values that no output needs (inputs stay: they are the signature).

    %unused = add(%x, %y) : ...   ->   (gone)
"""
from __future__ import annotations

from ..ir import Graph
from .registry import register_pass

__all__ = ["eliminate_dead_code"]


@register_pass("eliminate_dead_code")
def eliminate_dead_code(graph: Graph) -> Graph:
    live = set(graph.outputs)
    for node in reversed(graph.nodes):
        if node.name in live:
            live.update(node.operands)
    return graph.replace_nodes(n for n in graph.nodes if n.name in live or n.op == "input")
