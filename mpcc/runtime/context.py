"""What a protocol may use: the context.

A protocol is an ``async def`` over ``ctx``, the context of its node (each
node gets its own, from ``for_node``). The same code runs in three kinds of
context, so the protocol, the dealer's material and the cost can never
disagree:

- ``PartyContext``: a real party; tensors are its shares, messages travel.
- ``DealerContext`` (shape_context.py): shapes only (meta tensors); every
  request for correlated randomness is generated for real and stored.
- ``CostContext`` (shape_context.py): shapes only; counts bytes and material.

Rules for protocol code: no branching on data; requests for randomness
(``rand``, ``derive``) are made by both parties in the same order (never
inside ``if ctx.party == ...``); messages are awaited: ``exchange`` (both
send), ``transfer`` (one sends); independent parts run together with
``gather`` or ``spawn``, so their messages share steps (schedule.py). A
context's ``deliver`` carries out one step: all the messages every running
node awaits, in one message each way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
import copy
from typing import Callable

import torch

from ..backends.base import RingBackend
from ..backends.prg import Prg
from .schedule import Gather, Message

__all__ = ["Context", "PartyContext", "Material", "payload_bytes", "message_bytes", "widths", "SessionState",
           "ProtocolError", "PeerAborted", "Opening"]


class ProtocolError(RuntimeError):
    """A party could not complete a protocol step (peer gone, bad message, missing material)."""


class PeerAborted(ProtocolError):
    """The peer stopped the run. Only a generic code crosses: its reasons stay on its side."""


@dataclass
class Opening:
    """One message a party received, with what it reconstructs from it (for the view tests):
    ``own`` is the tensor it sent (an exchange) or its own share (a transfer), ``combine``
    how the two join ("add" mod 2^64 or "xor"), ``bits`` the width that matters."""
    node: str
    own: torch.Tensor
    received: torch.Tensor
    bits: int | None
    combine: str
    setup: bool = False     # the once-per-deployment message (D = W - B)

    def reconstructed(self) -> torch.Tensor:
        value = self.own ^ self.received if self.combine == "xor" else self.own + self.received
        return value if self.bits is None or self.bits >= 64 else value & ((1 << self.bits) - 1)


def payload_bytes(tensor: torch.Tensor, bits: int | None = None) -> int:
    """Bytes a tensor takes on the wire: elements that carry only their low
    ``bits`` bits are packed to those bits (the transport packs them)."""
    width = bits if bits is not None else tensor.element_size() * 8
    return math.ceil(tensor.numel() * width / 8)


def widths(tensors, bits) -> list:
    """Per-tensor bit widths from ``bits`` (None, one int for all, or a list)."""
    if isinstance(bits, (list, tuple)):
        return list(bits)
    return [bits] * len(tensors)


def message_bytes(tensors, bits) -> int:
    """Bytes of one message of several tensors (see ``payload_bytes`` and ``widths``)."""
    return sum(payload_bytes(t, b) for t, b in zip(tensors, widths(tensors, bits)))


@dataclass(frozen=True)
class Material:
    """One piece of dealer material as a plan lists it."""
    node: str
    index: int
    shape: tuple[int, ...]
    kind: str      # ring (additive shares) | xor (XOR shares of bit words)
    holder: str    # both | client | server
    stored: bool   # True: the dealer must store/send it; False: regenerated from a seed


async def deploy_once(ctx, key, make, like, sender):
    """``make()`` sent once per deployment by ``sender``; the receiver's copy (later runs:
    from the session), the sender None. Two nodes that read the same weight and start in
    the same step await one setup message (each step sends it once): a second ``make()``
    would run on the first's output (D = W - B is made in B's memory) and send B itself,
    the weight's mask. Once delivered, the message (the server's D) is not kept."""
    state = ctx.session
    if key not in state.deployment:
        if key not in state.pending_setup:
            tensors = (make(),) if ctx.party == sender else (like,)
            state.pending_setup[key] = Message(ctx.node, "setup", tensors, [None], ["add"], sender)
        result = await state.pending_setup[key]
        state.pending_setup.pop(key, None)
        state.deployment[key] = None if ctx.party == sender else result[0]
    return state.deployment[key] if ctx.party != sender else None


@dataclass
class SessionState:
    """What outlives one inference: values opened once per deployment, masks
    drawn for the deployment, and encodings of values fixed for the deployment
    (functions of the weights alone)."""
    deployment: dict[str, torch.Tensor] = field(default_factory=dict)
    scoped_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    encoded: dict[str, torch.Tensor] = field(default_factory=dict)
    plain: dict[str, torch.Tensor | None] = field(default_factory=dict)   # this party's static values, as run
    static: frozenset = frozenset()   # names of values that depend only on weights and constants
    # setup messages in flight, by key: readers of one weight that start in the same step share one
    pending_setup: dict = field(default_factory=dict)

    def fork(self) -> "SessionState":
        """A working copy for one run, committed only if the whole run succeeds on
        both sides: a failed run leaves the deployment as it was. Masks drawn for
        the deployment live only in the copy (the server overwrites them with
        D = W - B; a later deployment attempt draws them again from its seed)."""
        return SessionState(dict(self.deployment), {}, dict(self.encoded), dict(self.plain), self.static)


class Context:
    """Interface shared by the party, dealer and cost contexts."""
    party: int
    backend: RingBackend
    frac_bits: int
    meta: bool = False               # True: tensors carry shapes only
    operand_types: dict = {}         # param name -> TensorType, set by the executor per node
    operand_names: dict = {}         # param name -> value name
    out_type = None
    flow = None                      # the node's Flow (schedule.py), for ``spawn``
    node: str = ""
    counter: int = 0

    @property
    def device(self):
        return torch.device("meta") if self.meta else self.backend.device

    def begin(self, node: str) -> None:
        self.node, self.counter = node, 0

    def for_node(self, node: str) -> "Context":
        """This context's view for one node: its own label counter and operand
        types; everything else (session, material, counters) shared."""
        child = copy.copy(self)
        child.node, child.counter, child.flow = node, 0, None
        child._fresh_node_state()
        return child

    def _fresh_node_state(self) -> None:
        """Per-node fields of a subclass, reset in ``for_node``."""

    def _label(self, scope: str | None) -> str:
        label = f"deploy/{scope}" if scope else f"{self.node}/{self.counter}"
        self.counter += 1
        return label

    def rand(self, shape, *, holder: str = "both", kind: str = "ring", scope: str | None = None):
        """Uniform int64 words from the dealer: additively shared (kind ``ring``),
        XOR-shared (kind ``xor``) or known to one party (``holder``)."""
        raise NotImplementedError

    def derive(self, fn: Callable, *values, shape, holder: str = "both", kind: str = "ring"):
        """A value the dealer computes as ``fn(*values)`` from values it dealt
        (``rand`` results); shared (``both``) or given to one party."""
        raise NotImplementedError

    def deliver(self, messages: list[Message]) -> None:
        """One communication step: set each message's ``result``."""
        raise NotImplementedError

    # --- messages (awaited by protocols)
    async def exchange(self, *tensors: torch.Tensor, bits=None, combine="add", layout=None) -> tuple[torch.Tensor, ...]:
        """Both parties send ``tensors`` and receive the peer's (one step). ``combine``
        ("add", "xor", or one per tensor) says how a tensor and the peer's join into the
        opened value; it changes nothing on the wire and serves the view tests. ``layout``
        (one int64 mask per tensor): the positions of the ``bits`` that matter, when they
        are not the low ones; a packing transport sends only those."""
        return await Message(self.node, "exchange", tensors, widths(tensors, bits), _combines(tensors, combine),
                             layout=None if layout is None else list(layout))

    async def transfer(self, *tensors: torch.Tensor, sender: int, bits=None) -> tuple[torch.Tensor, ...] | None:
        """``sender`` sends ``tensors``; the receiver passes its own share (same
        shapes: what it joins the message with) and gets the sender's."""
        return await Message(self.node, "transfer", tensors, widths(tensors, bits), _combines(tensors, "add"), sender)

    async def deployment(self, key: str, make: Callable[[], torch.Tensor], like: torch.Tensor, *, sender: int):
        """``make()`` sent once per deployment by ``sender``; the receiver gets it
        (later runs: from the session), the sender None."""
        raise NotImplementedError

    def gather(self, *awaitables) -> Gather:
        """Await independent parts together: their messages share steps."""
        return Gather(list(awaitables))

    def spawn(self, awaitable) -> None:
        """Run ``awaitable`` beside the rest of this node's protocol (its result is
        not needed by it); the node finishes when it does."""
        self.flow.spawn(awaitable)

    overflow_flags: dict | None = None   # node -> XOR-shared flags (``execute(..., overflow_check=True)``)

    # --- helpers every context shares
    def check_range(self, x: torch.Tensor, bound_log2: int) -> None:
        """With the overflow check on, flag (secretly) each element of x with
        |x| >= 2^bound_log2 ring units; none below 3/4 of that (see
        ``out_of_range_bits``). Runs beside the protocol (no added rounds); the
        flags are ORed and opened once, at the end."""
        if self.overflow_flags is None:
            return
        from ..ops.overflow import out_of_range_bits

        async def check():
            self.flag(await out_of_range_bits(self, x, bound_log2, bound_log2 - 3))
        self.spawn(check())

    def flag(self, bits: torch.Tensor) -> None:
        """Add XOR-shared 0/1 words (1: out of its domain) to this node's overflow flags."""
        if self.overflow_flags is not None:
            self.overflow_flags.setdefault(self.node, []).append(bits)

    async def open(self, share: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Reveal an additive sharing to both parties (1 round)."""
        (other,) = await self.exchange(share, bits=bits)
        return share + other

    async def open_xor(self, share: torch.Tensor, bits: int | None = None) -> torch.Tensor:
        """Reveal an XOR sharing (of bit words) to both parties (1 round)."""
        (other,) = await self.exchange(share, bits=bits, combine="xor")
        return share ^ other

    def encode_static(self, name: str, value: torch.Tensor, make: Callable[[], torch.Tensor],
                      variant: str = "") -> torch.Tensor:
        """``make()`` (an encoding of ``value``, one ``variant`` of it), computed once
        per deployment when ``name`` depends only on the weights (a context with a
        session: a party, the emulator); shape contexts make it each time."""
        session = getattr(self, "session", None)
        if session is None or name not in session.static:
            return make()
        key = name + variant
        if key not in session.encoded:
            session.encoded[key] = make()
        return session.encoded[key]

    def public_share(self, value: torch.Tensor) -> torch.Tensor:
        """A sharing of a public (already encoded) ring value: party 0 holds it."""
        return value if self.party == 0 else torch.zeros_like(value)


def _combines(tensors, combine) -> list:
    return list(combine) if isinstance(combine, (list, tuple)) else [combine] * len(tensors)


HOLDERS = {"both": None, "client": 0, "server": 1}


class PartyContext(Context):
    """A real party: holds its PRG seed from the dealer and its stored material."""

    def __init__(self, party: int, backend: RingBackend, frac_bits: int, transport, dealer_seed: bytes,
                 material, session: SessionState, inference: str, views: list | None = None):
        """``material``: this party's stored items only, a dict by node or a feed
        with ``take(node, index)`` (material still being dealt). ``views``: a list
        that collects every ``Opening`` this party receives (tests)."""
        self.party, self.backend, self.frac_bits = party, backend, frac_bits
        self.transport = transport
        self.prg = Prg(dealer_seed)
        self.material = material
        self.session = session
        self.inference = inference
        self.views = views
        self.sent_by_node: dict[str, int] = {}   # online bytes this party sent, per node
        self.node, self.counter, self.stored_index = "", 0, 0

    def _fresh_node_state(self) -> None:
        self.stored_index = 0

    def begin(self, node: str) -> None:
        super().begin(node)
        self.stored_index = 0

    def _draw(self, label: str, shape, kind: str, scope):
        full = label if scope else f"{self.inference}/{label}"
        return self.backend.to_device(self.prg.ring(full, shape))

    def _stored(self) -> torch.Tensor:
        take = getattr(self.material, "take", None)
        if take is not None:   # a feed of material still being dealt
            value = take(self.node, self.stored_index)
        else:
            pieces = self.material.get(self.node, [])
            value = pieces[self.stored_index] if self.stored_index < len(pieces) else None
        if value is None:
            raise ProtocolError(f"party {self.party}: dealer material for {self.node} is missing or short "
                                f"(wanted item {self.stored_index})")
        self.stored_index += 1
        return self.backend.to_device(value)

    def rand(self, shape, *, holder="both", kind="ring", scope=None):
        label = self._label(scope)
        owner = HOLDERS[holder]
        if owner is not None and owner != self.party:
            return None
        if scope:  # the same for every inference of the deployment
            if scope in self.session.deployment:
                # a party needs a deployment mask only to make what it sends once (``deployment``);
                # after that the shape stands in for it (the dealer keeps the mask for its derivations)
                return torch.empty(tuple(shape), dtype=torch.int64, device="meta")
            if label not in self.session.scoped_masks:
                self.session.scoped_masks[label] = self._draw(label, tuple(shape), kind, scope)
            return self.session.scoped_masks[label]
        return self._draw(label, tuple(shape), kind, scope)

    def derive(self, fn, *values, shape, holder="both", kind="ring"):
        label = self._label(None)
        owner = HOLDERS[holder]
        if owner is None and self.party == 0:
            return self._draw(label, tuple(shape), kind, None)
        if owner is not None and owner != self.party:
            return None
        value = self._stored()
        if tuple(value.shape) != tuple(shape):
            raise ProtocolError(f"party {self.party}: dealer material for {self.node} has shape "
                                f"{tuple(value.shape)}, the protocol expects {tuple(shape)}")
        return value

    def deliver(self, messages):
        """All of one step's messages, as one message each way (``transport.step``)."""
        outgoing, incoming = [], []
        for message in messages:
            pieces = message.pieces()   # what the transport sends or expects, and counts
            if message.sends(self.party):
                outgoing.extend(pieces)
                if message.kind != "setup":
                    size = sum(piece.size for piece in pieces)
                    self.sent_by_node[message.node] = self.sent_by_node.get(message.node, 0) + size
            if message.receives(self.party):
                incoming.extend(pieces)
        setup_only = all(message.kind == "setup" for message in messages)   # both parties see the same list
        nodes = list(dict.fromkeys(message.node for message in messages))
        what = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
        received = [self.backend.to_device(t) for t in self.transport.step(outgoing, incoming, setup_only, what)]
        for message in messages:
            if not message.receives(self.party):
                message.result = None
                continue
            count = len(message.tensors)
            message.result, received = tuple(received[:count]), received[count:]
            if self.views is not None:
                own = message.tensors
                if message.kind == "setup":   # the message alone (no own share): a zero only when recording
                    own = [torch.zeros_like(t) for t in message.result]
                for mine, theirs, width, how in zip(own, message.result, message.bits, message.combine):
                    self.views.append(Opening(message.node, mine, theirs, width, how, message.kind == "setup"))

    async def deployment(self, key, make, like, *, sender):
        value = await deploy_once(self, key, make, like, sender)
        if self.party == sender:   # sent; the sender needs neither it nor its masks again
            self.session.scoped_masks.pop(f"deploy/{key}", None)
        return value
