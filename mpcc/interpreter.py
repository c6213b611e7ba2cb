"""Plaintext interpreter: runs the IR in float64 with each op's ``reference``.

This is the meaning every later stage (approximations, lowering, the secure
runtime) is tested against.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .ir import Graph, Node, dtype_of_kind
from .ops import get_op

__all__ = ["interpret", "InterpretError", "check_inputs", "check_weights"]


class InterpretError(RuntimeError):
    """Bad inputs or weights, or an op that failed; names the node and its module."""


def check_inputs(graph: Graph, inputs: Mapping[str, torch.Tensor]) -> None:
    """Every declared input present, with its declared shape; nothing extra."""
    declared = {n.name: n for n in graph.inputs}
    missing = sorted(set(declared) - set(inputs))
    extra = sorted(set(inputs) - set(declared))
    if missing or extra:
        raise InterpretError(f"inputs do not match the graph: missing {missing}, unexpected {extra}; "
                             f"expected {sorted(declared)}")
    for name, node in declared.items():
        value = inputs[name]
        if not isinstance(value, torch.Tensor):
            raise InterpretError(f"input {name!r} must be a tensor, not {type(value).__name__}")
        if tuple(value.shape) != node.type.shape:
            raise InterpretError(f"input {name!r} has shape {tuple(value.shape)}, the graph was traced with "
                                 f"{node.type.shape}")


def check_weights(graph: Graph, weights: Mapping[str, torch.Tensor]) -> None:
    """Every param the graph reads is in ``weights`` with the right shape."""
    problems = []
    for node in graph.params:
        key = node.attrs["key"]
        if key not in weights:
            problems.append(f"missing weight {key!r}")
        elif tuple(weights[key].shape) != node.type.shape:
            problems.append(f"weight {key!r} has shape {tuple(weights[key].shape)}, expected {node.type.shape}")
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


def interpret(graph: Graph, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    """Run ``graph`` in float64 and return its outputs in order.

    Args:
        graph: an IR graph (from ``mpcc.trace`` or after any passes).
        inputs: the model inputs by name, e.g. ``{"input_ids": ids}``.
        weights: the model's ``state_dict()`` (keys as the params name them).

    Example:
        >>> import torch, mpcc
        >>> layer = torch.nn.Linear(4, 2)
        >>> x = torch.ones(1, 4)
        >>> g = mpcc.trace(layer, (x,))
        >>> out, = mpcc.interpret(g, {g.inputs[0].name: x}, layer.state_dict())
        >>> bool(torch.allclose(out.float(), layer(x)))
        True
    """
    check_inputs(graph, inputs)
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
    return [env[name] for name in graph.outputs]
