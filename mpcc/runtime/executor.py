"""Runs a lowered graph as one party (or, on shapes, as the dealer or the cost model).

What a party holds for each value: public values and its own values in
plaintext (float64 reals, int64 ints), shared values as its int64 share,
the other party's values as ``None``.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable, Mapping

import torch

from ..ir import Graph, Node, dtype_of_kind
from ..ops import get_op

__all__ = ["execute", "ExecutionError", "RangeOverflowError", "OWNER_PARTY", "OVERFLOW_NODE"]

OWNER_PARTY = {"client": 0, "server": 1}


OVERFLOW_NODE = "overflow_check"   # the final check's name: its labels, material and cost go under it
# A product of two reals wraps the ring past 2^(63 - 2f); truncated, a wrap is off by 2^(64 - 2f). Outputs
# are checked against 2^(62 - 2f) (ring units: 2^(62 - f)), so a wrapped product that reaches an output is caught.
REVEAL_BOUND_LOG2 = 62


class ExecutionError(RuntimeError):
    """A node failed while running; names it and its module."""


class RangeOverflowError(ExecutionError):
    """The secure overflow check found values outside a protocol's domain: the outputs would be wrong."""


def _knows(vis: str, party: int) -> bool:
    return vis in ("public", "shared") or OWNER_PARTY.get(vis) == party


def _meta_of(node: Node) -> torch.Tensor:
    dtype = torch.int64 if node.type.vis == "shared" else dtype_of_kind(node.type.kind)
    return torch.empty(node.type.shape, dtype=dtype, device="meta")


def _plain(ctx, value):
    if value is None or not isinstance(value, torch.Tensor):
        return value
    return torch.empty(value.shape, dtype=value.dtype, device="meta") if ctx.meta else value.to(ctx.device)


def execute(graph: Graph, ctx, inputs: Mapping[str, torch.Tensor] | None = None,
            weights: Mapping[str, torch.Tensor] | None = None, *,
            on_node: Callable[[Node, float], None] | None = None,
            overflow_check: bool = False) -> dict[str, torch.Tensor | None]:
    """Run every node for ``ctx.party``; returns the outputs this party holds.

    Revealed outputs are decoded to plaintext; ``on_node(node, seconds)`` is
    called after each node (for progress and timing by op). With
    ``overflow_check`` the range-limited protocols flag values outside their
    domains, and one bit, opened to both parties at the end, turns them into
    a ``RangeOverflowError`` (see ``_overflow_verdict``).
    """
    ctx.overflow_flags = {} if overflow_check else None
    env: dict[str, torch.Tensor | None] = {}
    fixed = getattr(getattr(ctx, "session", None), "plain", None)   # a party's values fixed for the deployment
    static = ctx.session.static if fixed is not None else frozenset()
    dead_after = _dead_after(graph)
    deferred: list[Node] = []   # with the check on, outputs are opened only after the verdict
    for node in graph.nodes:
        start = time.perf_counter()
        ctx.begin(node.name)
        if overflow_check and node.op == "mpc.reveal":
            ctx.check_range(env[node.operands[0]], REVEAL_BOUND_LOG2 - ctx.frac_bits)
            deferred.append(node)
            continue
        try:
            if node.op == "param" or node.name not in static or node.type.vis == "shared":
                env[node.name] = _run(node, graph, env, ctx, inputs or {}, weights or {})
            else:
                if node.name not in fixed:
                    fixed[node.name] = _run(node, graph, env, ctx, inputs or {}, weights or {})
                env[node.name] = fixed[node.name]
        except Exception as error:
            if isinstance(error, ExecutionError):
                raise
            raise ExecutionError(f"party {ctx.party}: %{node.name} = {node.op}(...) in {node.origin or '<top>'} "
                                 f"failed: {type(error).__name__}: {error}") from error
        value = env[node.name]
        if value is not None and tuple(value.shape) != node.type.shape:
            raise ExecutionError(f"party {ctx.party}: %{node.name} = {node.op}(...) produced shape "
                                 f"{tuple(value.shape)}, its type says {node.type.shape}")
        for name in dead_after.get(node.name, ()):
            del env[name]   # no later node reads it: let its memory go now
        if on_node is not None:
            on_node(node, time.perf_counter() - start)
    if overflow_check:
        start = time.perf_counter()
        _overflow_verdict(graph, ctx)
        if on_node is not None:
            on_node(SimpleNamespace(name=OVERFLOW_NODE, op="mpc." + OVERFLOW_NODE), time.perf_counter() - start)
    for node in deferred:
        start = time.perf_counter()
        ctx.begin(node.name)   # the opening draws nothing: its check, in the loop, drew under this name
        env[node.name] = _run(node, graph, env, ctx, inputs or {}, weights or {})
        if on_node is not None:
            on_node(node, time.perf_counter() - start)
    return {name: env[name] for name in graph.outputs}


def _overflow_verdict(graph: Graph, ctx) -> None:
    """OR every node's flags to one bit per node, those to one bit, and open it to
    both parties: the one bit the check reveals. Only when it is set (the run is
    failing anyway) are the per-node bits opened, to name the first node."""
    from ..ops.overflow import any_bits
    flags = ctx.overflow_flags
    ctx.begin(OVERFLOW_NODE)
    if not flags:
        return
    nodes = list(flags)
    per_node = any_bits(ctx, [torch.cat([f.reshape(-1) for f in flags[n]]) for n in nodes])
    anywhere = any_bits(ctx, [per_node])
    opened = ctx.open_xor(anywhere & 1, bits=1)
    if ctx.meta or not int(opened.reshape(-1)[0]) & 1:
        return
    which = (ctx.open_xor(per_node & 1, bits=1) & 1).reshape(-1).nonzero().reshape(-1).tolist()
    first = graph[nodes[which[0]]]
    others = f" and {len(which) - 1} later node(s)" if len(which) > 1 else ""
    raise RangeOverflowError(f"values left the domain of %{first.name} = {first.op}(...) in "
                             f"{first.origin or '<top>'}{others}: the outputs would be wrong, so none are given "
                             f"(mpcc.check_ranges shows by how much, with the inputs and weights in the clear)")


def _dead_after(graph: Graph) -> dict[str, list[str]]:
    """node -> the values whose last reader it is (graph outputs are never dead)."""
    last_reader: dict[str, str] = {}
    for node in graph.nodes:
        for operand in node.operands:
            last_reader[operand] = node.name
    dead: dict[str, list[str]] = {}
    for value, reader in last_reader.items():
        if value not in graph.outputs:
            dead.setdefault(reader, []).append(value)
    return dead


def _run(node: Node, graph: Graph, env, ctx, inputs, weights):
    op = get_op(node.op)
    vis = node.type.vis
    if node.op == "mpc.reveal":
        share = env[node.operands[0]]
        ctx.operand_types = {"self": graph[node.operands[0]].type}
        ring = op.protocol(ctx, share, **node.attrs)
        if ring is None:
            return None
        if ctx.meta:
            return torch.empty(node.type.shape, dtype=dtype_of_kind(node.type.kind), device="meta")
        if node.type.kind == "real":
            return ctx.backend.decode(ring, ctx.frac_bits).cpu()
        return ring.cpu().to(dtype_of_kind(node.type.kind))   # ints as they are, bools as bools
    if not _knows(vis, ctx.party):
        return None
    if ctx.meta and vis != "shared":
        return _meta_of(node)
    if node.op == "input":
        return inputs[node.name].to(dtype_of_kind(node.type.kind))
    if node.op == "param":
        weight = weights[node.attrs["key"]].detach()
        if weight.dtype in (torch.float32, torch.float64) and node.type.kind == "real":
            return weight   # as given: encoding is exact from either, and a float64 copy of BERT is 880 MB
        return weight.to(dtype_of_kind(node.type.kind))
    if node.op == "const":
        return node.attrs["value"]
    operands = [env[name] for name in node.operands]
    if vis != "shared":
        return op.evaluate(operands, node.attrs).to(dtype_of_kind(node.type.kind))
    params = op.operand_params(node.attrs)
    ctx.operand_types = {p: graph[name].type for p, name in zip(params, node.operands)}
    ctx.operand_names = {p: name for p, name in zip(params, node.operands)}
    ctx.out_type = node.type
    values = [value if graph[name].type.vis == "shared" else _plain(ctx, value)
              for name, value in zip(node.operands, operands)]
    if op.protocol is None:  # a shape op or a sum: the same on shares as on plaintext
        return op.evaluate(values, node.attrs)
    recall = getattr(ctx, "recall", None)
    if recall is not None and recall(node):  # the dealer's shape run: requests copied from a twin node
        return _meta_of(node)
    return op.protocol(ctx, *op.bind(values, node.attrs))


