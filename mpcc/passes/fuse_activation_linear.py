"""An activation whose only reader is a server linear joins that linear (the
op's ``activation``), so its output is never truncated on its own: the linear
takes the untruncated share and one truncation drops both scales (MPCFormer's
Quad GeLU before BERT's FFN-out: one round and 16 bytes an element fewer).

    %gelu = mpc.gelu_quad(%h)  %out = mpc.linear_server(%gelu, %w, %b, transpose=True)
      ->  %out = mpc.linear_server(%h, %w, %b, transpose=True, activation='gelu_quad')

Which ops qualify is ``DEFERRED_ACTIVATIONS`` (keyed by the activation's name,
the op being ``mpc.<name>``); a value that is also an output or read twice
stays as it is.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node
from ..ops.arith import DEFERRED_ACTIVATIONS
from .registry import register_pass

__all__ = ["fuse_activation_linear"]


@register_pass("fuse_activation_linear")
def fuse_activation_linear(graph: Graph) -> Graph:
    users = graph.users()
    absorbed: dict[str, str] = {}   # the linear's name -> the activation it absorbs
    for node in graph.nodes:
        name = node.op.removeprefix("mpc.")
        if name not in DEFERRED_ACTIVATIONS or node.name in graph.outputs:
            continue
        readers = users.get(node.name, [])
        if len(readers) != 1:
            continue
        linear = graph[readers[0]]
        if linear.op == "mpc.linear_server" and linear.operands[0] == node.name \
                and node.name not in linear.operands[1:] and "activation" not in linear.attrs:
            absorbed[linear.name] = node.name
    return graph.fused(absorbed.values(), {name: (_absorbing(graph[name], graph[activation]),)
                                           for name, activation in absorbed.items()})


def _absorbing(linear: Node, activation: Node) -> Node:
    """The linear reading the activation's input, the activation named in its attributes."""
    return replace(linear, operands=activation.operands[:1] + linear.operands[1:],
                   attrs={**linear.attrs, "activation": activation.op.removeprefix("mpc.")})
