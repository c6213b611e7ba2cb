"""Suspendable protocols and the driver that advances them step by step.

A protocol is an ``async def`` over its node's context. Where it needs a
message it awaits a ``Message`` (through ``ctx.exchange``, ``ctx.transfer``,
``ctx.deployment``); where two parts of it are independent it awaits
``ctx.gather(...)`` or starts one with ``ctx.spawn(...)``. No event loop is
involved: a ``Flow`` sends values into the coroutines by hand, so the same
code runs for a party (real messages), the dealer and the cost model
(shapes only), and the executor can advance every ready node's flow at
once and send all their messages of one step in one message each way.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import torch

__all__ = ["Message", "Piece", "Gather", "Flow", "run_flow"]


@dataclass(eq=False)
class Message:
    """One request of a protocol for one step of communication.

    ``kind``: ``exchange`` (both parties send ``tensors`` and receive the
    peer's, same shapes), ``transfer`` (``sender`` sends ``tensors``; the
    receiver passes its own tensors of the same shapes) or ``setup`` (a
    once-per-deployment transfer, counted apart). ``bits``: how many bits per
    element matter (what the byte counts charge). They are the low bits except
    in the comparison tree's words, whose lanes sit at strided positions
    (borrow_tree.py): a transport that packs must learn those positions, not
    mask to the low bits: ``layout`` gives them per tensor, an int64 mask of
    the positions, None for the low bits); ``combine`` per tensor,
    how a tensor and the peer's join into the opened value ("add" or "xor"),
    for the view tests. ``result`` is set by the context's ``deliver``.
    """
    node: str
    kind: str
    tensors: tuple
    bits: list
    combine: list
    sender: int | None = None
    result: tuple | None = None
    layout: list | None = None

    def pieces(self) -> list[Piece]:
        """The message's tensors as the transport sends them (or expects them)."""
        layouts = self.layout or [None] * len(self.tensors)
        return [Piece(t, b, l, self.kind == "setup") for t, b, l in zip(self.tensors, self.bits, layouts)]

    def __await__(self):
        return (yield self)

    def sends(self, party: int) -> bool:
        return self.kind == "exchange" or self.sender == party

    def receives(self, party: int) -> bool:
        return self.kind == "exchange" or self.sender != party


@dataclass
class Piece:
    """One tensor of a step's message: the tensor (for a received piece, one of the
    expected shape and dtype), the bits per word that matter (None: all), the
    layout of strided words (an int64 mask of the positions that matter; None: the
    low bits) and whether it is once-per-deployment setup data."""
    tensor: torch.Tensor
    bits: int | None = None
    layout: int | None = None
    setup: bool = False

    @property
    def width(self) -> int:
        if self.tensor.dtype != torch.int64 or self.bits is None:
            return self.tensor.element_size() * 8
        return self.bits

    @property
    def size(self) -> int:
        """Bytes on the wire: packed to ``width`` bits a word (what the cost model charges)."""
        return math.ceil(self.tensor.numel() * self.width / 8)


def unique(messages: list) -> list:
    """Each message once, in order: strands that await one shared message (a weight's
    setup, ``deploy_once``) send and receive it once."""
    return list({id(m): m for m in messages}.values())


@dataclass(eq=False)
class Gather:
    """Await several awaitables at once; their messages share steps."""
    parts: list

    def __await__(self):
        return (yield self)


class _Strand:
    """One coroutine of a flow and, while it awaits a ``Gather``, its children."""

    def __init__(self, awaitable):
        self.coro = awaitable if inspect.iscoroutine(awaitable) else None
        self.done = self.coro is None
        self.value = None if self.coro is not None else awaitable
        self.waiting: Message | list | None = None

    def start(self) -> None:
        if not self.done:
            self._step(None)

    def _step(self, value) -> None:
        while True:
            try:
                request = self.coro.send(value)
            except StopIteration as stop:
                self.done, self.value, self.waiting = True, stop.value, None
                return
            if isinstance(request, Message):
                self.waiting = request
                return
            if not isinstance(request, Gather):
                raise TypeError(f"a protocol awaited {type(request).__name__}; only ctx messages and gathers")
            children = [_Strand(part) for part in request.parts]
            for child in children:
                child.start()
            if all(child.done for child in children):
                value = [child.value for child in children]
                continue
            self.waiting = children
            return

    def pending(self, out: list) -> None:
        if isinstance(self.waiting, Message):
            out.append(self.waiting)
        elif self.waiting is not None:
            for child in self.waiting:
                child.pending(out)

    def resume(self) -> None:
        """Continue after a step in which every pending message got its result."""
        if isinstance(self.waiting, Message):
            self._step(self.waiting.result)
        elif self.waiting is not None:
            for child in self.waiting:
                if not child.done:
                    child.resume()
            if all(child.done for child in self.waiting):
                self._step([child.value for child in self.waiting])


@dataclass(eq=False)
class Flow:
    """One node's protocol: its coroutine plus any strands it ``spawn``ed. Done
    when all of them are; ``steps`` counts the communication steps it took part in,
    ``seconds`` the time spent computing in it."""
    root: _Strand
    background: list = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0

    @classmethod
    def start(cls, awaitable, ctx=None) -> "Flow":
        flow = cls(_Strand(awaitable))
        if ctx is not None:
            ctx.flow = flow
        flow._timed(flow.root.start)
        return flow

    def spawn(self, awaitable) -> None:
        strand = _Strand(awaitable)
        self.background.append(strand)
        strand.start()

    @property
    def done(self) -> bool:
        return self.root.done and all(s.done for s in self.background)

    @property
    def value(self):
        return self.root.value

    def pending(self) -> list[Message]:
        out: list[Message] = []
        self.root.pending(out)
        for strand in list(self.background):
            strand.pending(out)
        return unique(out)

    def resume(self) -> None:
        self.steps += 1

        def work():
            for strand in [self.root] + list(self.background):
                if not strand.done:
                    strand.resume()
        self._timed(work)

    def _timed(self, work) -> None:
        start = time.perf_counter()
        work()
        self.seconds += time.perf_counter() - start


def run_flow(ctx, awaitable):
    """Drive one protocol to its end alone: ``(value, steps)``. For one-op runs
    (tests, the harness) and the shape contexts' node-by-node runs."""
    flow = Flow.start(awaitable, ctx)
    while not flow.done:
        messages = flow.pending()
        if not messages:
            raise RuntimeError("a protocol is stuck: it waits but sends nothing")
        ctx.deliver(messages)
        flow.resume()
    return flow.value, flow.steps


def meta_like(tensor) -> torch.Tensor:
    return torch.empty(tuple(tensor.shape), dtype=tensor.dtype, device="meta")
