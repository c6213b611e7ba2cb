"""The transport interface, and the in-process transport: two endpoints
joined by queues, counting what a wire would carry (bytes per party, rounds,
setup traffic apart). The network transport (``mpcc.net.endpoint``) is the
same interface over TLS.

A party that fails sends an abort to its peer, so the peer raises at once
instead of waiting; every wait has a time-out. The abort carries a generic
code, never the failing party's error text (which can hold secret-dependent
values): details stay on the side that failed.
"""
from __future__ import annotations

import os
import queue
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from .context import PeerAborted, ProtocolError
from .schedule import Piece

__all__ = ["Transport", "Piece", "InProcessChannel", "Endpoint", "LinkStats", "ABORT_CODES", "TRANSPORTS",
           "open_channel", "default_transport", "carried", "compacted"]

ABORT_CODES = {"failed": "it failed (its reasons stay on its side)",
               "interrupted": "it was interrupted",
               "refused": "it refused the session (its reasons stay on its side)",
               "no-material": "it has no material dealt ahead left for this deployment (deal more)"}


class _Abort:
    def __init__(self, code: str):
        if code not in ABORT_CODES:
            raise ValueError(f"unknown abort code {code!r}")
        self.code = code


def carried(piece: Piece) -> torch.Tensor:
    """The piece's tensor with the bits a packing transport does not carry set to zero:
    the in-process transport sends this too, so every protocol is tested on what a
    network would deliver (a protocol reading a bit it did not send fails in tests)."""
    tensor = piece.tensor.detach()
    if tensor.dtype != torch.int64 or piece.width >= 64 and piece.layout is None:
        return tensor
    keep = piece.layout if piece.layout is not None else (1 << piece.width) - 1
    return tensor & (keep - (1 << 64) if keep >= 1 << 63 else keep)


def compacted(tensor: torch.Tensor, piece: Piece) -> torch.Tensor:
    """A received tensor's carried bits moved down to its low ``bits``, in order
    (what the view tests check for uniformity); low-bit pieces as they are."""
    if piece.layout is None or tensor.dtype != torch.int64:
        return tensor
    layout = piece.layout & ((1 << 64) - 1)
    positions = [p for p in range(64) if layout >> p & 1]
    out = torch.zeros_like(tensor)
    for index, position in enumerate(positions):
        out |= ((tensor >> position) & 1) << index
    return out


class Transport(Protocol):
    """What a party's context needs from a channel to its peer."""
    party: int
    stats: "LinkStats"
    record: list | None   # (tensor, bits) of every received piece, kept when a test asks

    def step(self, outgoing: list[Piece], incoming: list[Piece], setup_only: bool = False,
             what: str = "") -> list[torch.Tensor]:
        """Send ``outgoing`` as one message and receive the peer's, which must match
        ``incoming`` (shapes, dtypes, widths); ``what`` names the step's nodes for errors."""

    def abort(self, code: str = "failed") -> None:
        """Tell the peer this party stopped; only ``code`` (a key of ABORT_CODES) crosses."""


@dataclass
class LinkStats:
    bytes_sent: int = 0
    setup_bytes_sent: int = 0
    rounds: int = 0
    setup_rounds: int = 0   # steps that carry only once-per-deployment data (a first run's weights opening)
    messages: int = 0
    wait_seconds: float = 0.0   # time blocked waiting for the peer
    bytes_received: int = 0     # the peer's online bytes (what a party alone can count of them)
    setup_bytes_received: int = 0

    def count(self, outgoing: list[Piece], setup_only: bool, incoming: list[Piece] = ()) -> None:
        """One step's messages: bytes by kind, one round (or one setup round)."""
        for piece in outgoing:
            if piece.setup:
                self.setup_bytes_sent += piece.size
            else:
                self.bytes_sent += piece.size
        for piece in incoming:
            if piece.setup:
                self.setup_bytes_received += piece.size
            else:
                self.bytes_received += piece.size
        if setup_only:
            self.setup_rounds += 1
        else:
            self.rounds += 1
        self.messages += 1


@dataclass
class Endpoint:
    party: int
    inbox: "queue.Queue"
    outbox: "queue.Queue"
    timeout: float
    stats: LinkStats = field(default_factory=LinkStats)
    record: list | None = None  # (tensor, bit width) of every received message, kept when a test asks

    def step(self, outgoing: list[Piece], incoming: list[Piece], setup_only: bool = False,
             what: str = "") -> list[torch.Tensor]:
        """One communication step: send this party's pieces (possibly none) as one
        message, receive the peer's, check it against ``incoming`` (shapes and dtypes).
        Both are sent before either is read, so large messages cannot deadlock.
        A step is one round for both parties; setup pieces count apart, and so
        does a step that carries nothing else (``setup_only``, both parties agree)."""
        self.stats.count(outgoing, setup_only, incoming)
        self.outbox.put([carried(p) for p in outgoing])
        received = self._get()
        if len(received) != len(incoming) or any(tuple(a.shape) != tuple(b.tensor.shape) or a.dtype != b.tensor.dtype
                                                 for a, b in zip(received, incoming)):
            raise ProtocolError(f"party {self.party}: the peer sent {[tuple(t.shape) for t in received]}, "
                                f"expected {[tuple(p.tensor.shape) for p in incoming]}")
        if self.record is not None:
            self.record.extend((compacted(t, p), p.bits) for t, p in zip(received, incoming))
        return received

    def _get(self) -> list[torch.Tensor]:
        start = time.perf_counter()
        try:
            item = self.inbox.get(timeout=self.timeout)
        except queue.Empty:
            raise ProtocolError(f"party {self.party}: no message from the peer within {self.timeout:.0f} s") from None
        self.stats.wait_seconds += time.perf_counter() - start
        if isinstance(item, _Abort):
            raise PeerAborted(f"party {self.party}: the peer stopped: {ABORT_CODES[item.code]}")
        return item

    def abort(self, code: str = "failed") -> None:
        """Tell the peer this party stopped; only ``code`` (a key of ABORT_CODES) crosses."""
        self.outbox.put(_Abort(code))


class InProcessChannel:
    """Two connected endpoints: ``channel.endpoints[0]`` is the client's."""

    def __init__(self, timeout: float = 120.0):
        to_client, to_server = queue.Queue(), queue.Queue()
        self.endpoints = (Endpoint(0, to_client, to_server, timeout), Endpoint(1, to_server, to_client, timeout))

    def interrupt(self) -> None:
        """Wake both parties (Ctrl-C in the main thread): each raises at its next receive."""
        for endpoint in self.endpoints:
            endpoint.abort("interrupted")

    def close(self) -> None:
        """Nothing to release (the network channel closes its connection)."""


def _loopback(timeout: float):
    from ..net.endpoint import LoopbackChannel   # the network layer builds on this module
    return LoopbackChannel(timeout)


# how the two parties of a one-process run talk: queues, or a real TLS connection on 127.0.0.1
TRANSPORTS = {"inprocess": InProcessChannel, "tls": _loopback}


def default_transport() -> str:
    """``MPCC_TRANSPORT`` (tests run the runtime suite over both), else in-process."""
    return os.environ.get("MPCC_TRANSPORT", "inprocess")


def open_channel(kind: str | None, timeout: float):
    """Two connected endpoints of transport ``kind`` (``channel.endpoints``: client, server)."""
    kind = kind or default_transport()
    if kind not in TRANSPORTS:
        raise ValueError(f"unknown transport {kind!r}; choose one of {', '.join(TRANSPORTS)}")
    return TRANSPORTS[kind](timeout)
