"""Runs a lowered graph as one party (or, on shapes, as the dealer or the cost model).

What a party holds for each value: public values and its own values in
plaintext (float64 reals, int64 ints), shared values as its int64 share,
the other party's values as ``None``.
"""
from __future__ import annotations

import heapq
import inspect
import time
from types import SimpleNamespace
from typing import Callable, Mapping

import torch

from ..ir import Graph, Node, dtype_of_kind
from ..ops import get_op
from ..ops.wire import Wire, share_of
from .schedule import Flow, unique

__all__ = ["execute", "execute_steps", "ExecutionError", "RangeOverflowError", "OWNER_PARTY", "OVERFLOW_NODE"]

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
            overflow_check: bool = False, concurrent: bool | None = None) -> dict[str, torch.Tensor | None]:
    """Run every node for ``ctx.party``; returns the outputs this party holds.

    Scheduling: a node starts as soon as its operands are done, and every
    running node's protocol advances together: one communication step
    carries all their messages (``concurrent``, the default for a party).
    The shape contexts (dealer, cost model) run node after node instead
    (``concurrent=False``: their material is recorded node by node) and get
    the same step count from the same rule, which ``ctx.schedule`` records:
    a node finishes ``steps`` steps after the last of its operands.

    Revealed outputs are decoded to plaintext; ``on_node(node, seconds)`` is
    called as each node finishes (for progress and timing by op). With
    ``overflow_check`` the range-limited protocols flag values outside their
    domains, and one bit, opened to both parties at the end, turns them into
    a ``RangeOverflowError`` (see ``_overflow_verdict``).
    """
    run = _Run(graph, ctx, inputs or {}, weights or {}, on_node, overflow_check,
               not ctx.meta if concurrent is None else concurrent)
    return run.go()


def execute_steps(graph: Graph, ctx, inputs=None, weights=None, *, on_node=None, overflow_check: bool = False):
    """``execute`` as a generator: it yields each step's messages for the caller to
    deliver (set their ``result``s) and returns the outputs. The emulator drives
    both parties this way in one thread."""
    run = _Run(graph, ctx, inputs or {}, weights or {}, on_node, overflow_check, True)
    return (yield from run.steps_of_run())


class _Run:
    """One execution of a graph: readiness, flows, the step clock, freeing values."""

    def __init__(self, graph, ctx, inputs, weights, on_node, overflow_check, concurrent):
        self.graph, self.ctx, self.inputs, self.weights = graph, ctx, inputs, weights
        self.on_node, self.overflow_check, self.concurrent = on_node, overflow_check, concurrent
        ctx.overflow_flags = {} if overflow_check else None
        self.env: dict[str, torch.Tensor | None] = {}
        self.fixed = getattr(getattr(ctx, "session", None), "plain", None)   # a party's values fixed for the deployment
        self.static = ctx.session.static if self.fixed is not None else frozenset()
        self.order = {node.name: index for index, node in enumerate(graph.nodes)}
        self.waiting = {node.name: len(set(node.operands)) for node in graph.nodes}
        self.readers: dict[str, list[str]] = {}
        for node in graph.nodes:
            for operand in dict.fromkeys(node.operands):
                self.readers.setdefault(operand, []).append(node.name)
        self.unread = {name: len(readers) for name, readers in self.readers.items()}
        self.finish: dict[str, int] = {}   # node -> the step after which it was done
        self.start: dict[str, int] = {}    # node -> the steps done when it started
        self.steps = 0                     # communication steps so far (concurrent) / the critical path (not)
        self.deferred: list[Node] = []     # with the check on, outputs are opened only after the verdict

    def go(self):
        steps = self.steps_of_run()
        try:
            while True:
                self.ctx.deliver(next(steps))
        except StopIteration as stop:
            return stop.value

    def steps_of_run(self):
        """The run, yielding the messages of each communication step; returns the outputs."""
        # (first step it can run at, graph position): the concurrent run starts nodes in this order, and
        # the shape runs follow the same order, so the dealer deals material in the order parties take it
        ready = [(0, index) for index, node in enumerate(self.graph.nodes) if not node.operands]
        heapq.heapify(ready)
        flows: dict[str, Flow] = {}
        while ready or flows:
            while ready:   # start everything that can start
                node = self.graph.nodes[heapq.heappop(ready)[1]]
                flow = self._start(node)
                if flow is not None and (flow.done or not self.concurrent):
                    self._drive_alone(node, flow)
                    flow = None
                if flow is None:
                    self._done(node, ready)
                else:
                    flows[node.name] = flow
            if flows:
                yield from self._step(flows, ready)
        yield from self._finish_checks()
        self.ctx.schedule = {"rounds": self.steps, "finish": self.finish, "start": self.start}
        return {name: share_of(self.ctx, self.env[name]) for name in self.graph.outputs}

    def _step(self, flows, ready):
        """One communication step for every running flow."""
        messages = unique([message for flow in flows.values() for message in flow.pending()])
        if not messages:
            raise ExecutionError(f"party {self.ctx.party}: nodes {sorted(flows)} wait but send nothing")
        yield messages
        self.steps += 1
        for name in list(flows):
            flow = flows[name]
            self._guard(self.graph[name], flow.resume)
            if flow.done:
                del flows[name]
                self._take_result(self.graph[name], flow)
                self._done(self.graph[name], ready)

    def _drive_alone(self, node, flow):
        """Shape contexts: run one node's protocol to its end, its steps resolved at once."""
        while not flow.done:
            self.ctx.deliver(flow.pending())
            self._guard(node, flow.resume)
        self._take_result(node, flow)

    def _start(self, node: Node) -> Flow | None:
        """Begin ``node``: local work is done at once (None); a protocol returns its flow."""
        self.ctx.begin(node.name)
        self._started = time.perf_counter()
        ctx = self.ctx.for_node(node.name)
        if self.overflow_check and node.op == "mpc.reveal":
            self.deferred.append(node)

            async def check():
                ctx.check_range(share_of(ctx, self.env[node.operands[0]]), REVEAL_BOUND_LOG2 - ctx.frac_bits)
            return Flow.start(check(), ctx)
        value = self._guard(node, lambda: self._value(node, ctx))
        if inspect.iscoroutine(value):
            return self._guard(node, lambda: Flow.start(value, ctx))
        self._store(node, value)
        return None

    def _value(self, node, ctx):
        fixed = self.fixed
        if node.op == "param" or node.name not in self.static or node.type.vis == "shared":
            return _run(node, self.graph, self.env, ctx, self.inputs, self.weights)
        if node.name not in fixed:
            fixed[node.name] = _run(node, self.graph, self.env, ctx, self.inputs, self.weights)
        return fixed[node.name]

    def _take_result(self, node, flow):
        if self.overflow_check and node.op == "mpc.reveal" and node in self.deferred:
            self.env[node.name] = None   # opened after the verdict
        else:
            self._store(node, self._guard(node, lambda: _finish_value(node, self.ctx, flow.value)))
        if self.ctx.meta and hasattr(self.ctx, "node_steps"):
            self.ctx.node_steps[node.name] = flow.steps
        self._flow_steps = flow.steps
        self._flow_seconds = flow.seconds

    def _store(self, node, value):
        if value is not None and isinstance(value, (torch.Tensor, Wire)) and tuple(value.shape) != node.type.shape:
            raise ExecutionError(f"party {self.ctx.party}: %{node.name} = {node.op}(...) produced shape "
                                 f"{tuple(value.shape)}, its type says {node.type.shape}")
        if isinstance(value, Wire) and hasattr(self.ctx, "export"):
            self.ctx.export(value)   # the dealer keeps what later nodes' cross terms are made from
        self.env[node.name] = value
        self._flow_steps, self._flow_seconds = None, None

    def _done(self, node: Node, ready: list) -> None:
        start = max((self.finish[o] for o in node.operands), default=0)
        self.start[node.name] = start
        if self.concurrent:
            self.finish[node.name] = self.steps
        else:
            steps = self._flow_steps
            if steps is None:   # no flow ran: a local op, or one recalled from a twin (shape contexts)
                steps = getattr(self.ctx, "node_steps", {}).get(node.name, 0)
            self.finish[node.name] = start + steps
            self.steps = max(self.steps, self.finish[node.name])
        for operand in dict.fromkeys(node.operands if node not in self.deferred else ()):  # opened later: kept
            self.unread[operand] -= 1
            if not self.unread[operand] and operand not in self.graph.outputs:
                self.env.pop(operand, None)   # no later node reads it: let its memory go now
        for reader in self.readers.get(node.name, ()):
            self.waiting[reader] -= 1
            if not self.waiting[reader]:
                at = max(self.finish[o] for o in self.graph[reader].operands)
                heapq.heappush(ready, (at, self.order[reader]))
        if self.on_node is not None:
            seconds = self._flow_seconds if self._flow_seconds is not None else time.perf_counter() - self._started
            self.on_node(node, seconds)
        self._flow_steps, self._flow_seconds = None, None

    def _guard(self, node, work):
        try:
            return work()
        except Exception as error:
            if isinstance(error, ExecutionError):
                raise
            raise ExecutionError(f"party {self.ctx.party}: %{node.name} = {node.op}(...) in {node.origin or '<top>'} "
                                 f"failed: {type(error).__name__}: {error}") from error

    def _finish_checks(self):
        """The overflow verdict, then the deferred openings (all in one step)."""
        if not self.overflow_check:
            return
        ctx = self.ctx
        ctx.begin(OVERFLOW_NODE)
        verdict_ctx = ctx.for_node(OVERFLOW_NODE)
        start = time.perf_counter()
        verdict = Flow.start(_overflow_verdict(self.graph, verdict_ctx), verdict_ctx)
        while not verdict.done:
            yield verdict.pending()
            self.steps += 1
            self._guard(SimpleNamespace(name=OVERFLOW_NODE, op="mpc." + OVERFLOW_NODE, origin=None), verdict.resume)
        if self.on_node is not None:
            self.on_node(SimpleNamespace(name=OVERFLOW_NODE, op="mpc." + OVERFLOW_NODE), time.perf_counter() - start)
        if not self.deferred:
            return
        flows = {}
        for node in self.deferred:   # the opening draws nothing: its check drew under this name
            node_ctx = ctx.for_node(node.name)
            value = _run(node, self.graph, self.env, node_ctx, self.inputs, self.weights)
            flows[node.name] = Flow.start(value, node_ctx)
        while any(not flow.done for flow in flows.values()):
            yield unique([m for flow in flows.values() for m in flow.pending()])
            self.steps += 1
            for flow in flows.values():
                flow.resume()
        for node in self.deferred:
            self.env[node.name] = _finish_value(node, ctx, flows[node.name].value)
            if self.on_node is not None:
                self.on_node(node, flows[node.name].seconds)


async def _overflow_verdict(graph: Graph, ctx) -> None:
    """OR every node's flags to one bit per node, those to one bit, and open it to
    both parties: the one bit the check reveals. Only when it is set (the run is
    failing anyway) are the per-node bits opened, to name the first node."""
    from ..ops.overflow import any_bits
    flags = ctx.overflow_flags
    if not flags:
        return
    nodes = list(flags)
    per_node = await any_bits(ctx, [torch.cat([f.reshape(-1) for f in flags[n]]) for n in nodes])
    anywhere = await any_bits(ctx, [per_node])
    opened = await ctx.open_xor(anywhere & 1, bits=1)
    if ctx.meta or not int(opened.reshape(-1)[0]) & 1:
        return
    which = (await ctx.open_xor(per_node & 1, bits=1) & 1).reshape(-1).nonzero().reshape(-1).tolist()
    first = graph[nodes[which[0]]]
    others = f" and {len(which) - 1} later node(s)" if len(which) > 1 else ""
    raise RangeOverflowError(f"values left the domain of %{first.name} = {first.op}(...) in "
                             f"{first.origin or '<top>'}{others}: the outputs would be wrong, so none are given "
                             f"(mpcc.check_ranges shows by how much, with the inputs and weights in the clear)")


def _finish_value(node: Node, ctx, value):
    """A finished protocol's result; an opened output decoded to plaintext."""
    if node.op != "mpc.reveal" or value is None:
        return value
    if ctx.meta:
        return torch.empty(node.type.shape, dtype=dtype_of_kind(node.type.kind), device="meta")
    if node.type.kind == "real":
        return ctx.backend.decode(value, ctx.frac_bits).cpu()
    return value.cpu().to(dtype_of_kind(node.type.kind))   # ints as they are, bools as bools


# ops that only move or take elements: a wire passes through them (``Wire.relaid``)
LAYOUT_OPS = frozenset({"view", "reshape", "permute", "transpose", "t", "unsqueeze", "squeeze", "flatten", "slice"})


def _run(node: Node, graph: Graph, env, ctx, inputs, weights):
    op = get_op(node.op)
    vis = node.type.vis
    if node.op == "mpc.reveal":   # a coroutine; ``_finish_value`` decodes what it opens
        ctx.operand_types = {"self": graph[node.operands[0]].type}
        return op.protocol(ctx, share_of(ctx, env[node.operands[0]]), **node.attrs)
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
    if vis != "shared":   # plaintext: a float32 weight (kept as given for encoding) joins float64 values
        operands = [v.double() if isinstance(v, torch.Tensor) and v.dtype == torch.float32 else v for v in operands]
        return op.evaluate(operands, node.attrs).to(dtype_of_kind(node.type.kind))
    params = op.operand_params(node.attrs)
    ctx.operand_types = {p: graph[name].type for p, name in zip(params, node.operands)}
    ctx.operand_names = {p: name for p, name in zip(params, node.operands)}
    ctx.out_type = node.type
    values = [(value if op.wires else share_of(ctx, value)) if graph[name].type.vis == "shared"
              else _plain(ctx, value) for name, value in zip(node.operands, operands)]
    if op.protocol is None:  # a shape op or a sum: the same on shares as on plaintext
        wire = operands[0] if len(operands) == 1 else None
        if isinstance(wire, Wire) and node.op in LAYOUT_OPS:   # a wire stays one through a relayout
            return wire.relaid(lambda tensor: op.evaluate([tensor], node.attrs))
        return op.evaluate(values, node.attrs)
    recall = getattr(ctx, "recall", None)
    # the dealer's shape run: requests copied from a twin node (not for ops on wires: a copy would lose
    # the wire its twin returned, and the cross terms refer to other nodes' material)
    if recall is not None and not op.wires and recall(node):
        return _meta_of(node)
    return op.protocol(ctx, *op.bind(values, node.attrs))


