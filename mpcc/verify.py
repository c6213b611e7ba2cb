"""IR verifier (``lint``): the rules every graph obeys between passes.

Checks SSA order, known ops and arguments, source nodes, visibilities that
agree with the inference rule, and (with ``shapes=True``) every node's shape
and kind by running its reference on meta tensors.
"""
from __future__ import annotations

import re

import torch

from .ir import Graph, IRError, dtype_of_kind, join_visibility
from .ops import UnknownOpError, get_op

__all__ = ["lint", "LintError"]

OWNERS = ("client", "server", "public")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class LintError(IRError):
    """The graph breaks an IR rule; names the node."""


def _fail(node, message):
    raise LintError(f"%{node.name} = {node.op}(...) in {node.origin or '<top>'}: {message}")


def lint(graph: Graph, *, shapes: bool = False) -> Graph:
    """Raise ``LintError`` if ``graph`` is malformed; return it otherwise."""
    defined: dict[str, object] = {}
    for node in graph.nodes:
        if not _NAME.fullmatch(node.name):
            _fail(node, "a value name is letters, digits and '_' (names enter dealer labels)")
        try:
            op = get_op(node.op)
        except UnknownOpError as error:
            _fail(node, str(error))
        for operand in node.operands:
            if operand not in defined:
                _fail(node, f"operand %{operand} is not defined before use")
        _check_arguments(node, op)
        _check_source(node)
        if node.type.vis != "?" and node.op not in ("input", "param", "const", "mpc.share", "mpc.reveal") \
                and op.family != "create":
            expected = join_visibility(graph[o].type.vis for o in node.operands)
            if expected != "?" and expected != node.type.vis:
                _fail(node, f"visibility {node.type.vis} but operands give {expected}")
        if shapes and not op.source and node.op != "const":
            _check_shape(node, op, graph)
        defined[node.name] = node
    for name in graph.outputs:
        if name not in defined:
            raise LintError(f"output %{name} is not defined")
    return graph


def _check_arguments(node, op):
    try:
        if op.source:
            unknown = set(node.attrs) - set(op.params) - {"owner"}
            if unknown or node.operands:
                raise TypeError(f"a source takes no operands and attrs {op.params}")
        else:
            op.bind(list(node.operands), node.attrs)
    except TypeError as error:
        _fail(node, str(error))


def _check_source(node):
    if node.op == "input":
        if node.attrs.get("owner") not in OWNERS:
            _fail(node, f"input owner must be one of {OWNERS}")
        if node.type.vis not in ("?", node.attrs["owner"]):
            _fail(node, f"input visibility {node.type.vis} differs from its owner {node.attrs['owner']}")
    elif node.op == "param":
        if not isinstance(node.attrs.get("key"), str):
            _fail(node, "param needs a string key")
        if node.type.vis not in ("?", "server"):
            _fail(node, "params are the server's")
    elif node.op == "const":
        value = node.attrs.get("value")
        if not isinstance(value, torch.Tensor):
            _fail(node, "const needs a tensor value")
        if tuple(value.shape) != node.type.shape or value.dtype != dtype_of_kind(node.type.kind):
            _fail(node, f"const value {value.dtype}{list(value.shape)} does not match its type {node.type}")
        if node.type.vis not in ("?", "public"):
            _fail(node, "constants are public")


def _check_shape(node, op, graph):
    operands = []
    for name in node.operands:
        source = graph[name]
        if source.op == "const":
            operands.append(source.attrs["value"])  # data-dependent shape ops (index) need real values
        else:
            operands.append(torch.empty(source.type.shape, dtype=dtype_of_kind(source.type.kind), device="meta"))
    try:
        with torch.no_grad():
            result = op.evaluate(operands, node.attrs)
    except (NotImplementedError, RuntimeError) as error:
        if "meta" in str(error).lower() or "data-dependent" in str(error).lower():
            return  # this reference cannot run on meta tensors; shapes are checked by the interpreter
        _fail(node, f"reference fails on operand shapes: {error}")
    if tuple(result.shape) != node.type.shape:
        _fail(node, f"shape {node.type.shape} but the reference gives {tuple(result.shape)}")
