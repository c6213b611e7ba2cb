"""In-process transport: two endpoints joined by queues, counting what a
wire would carry (bytes per party, rounds, setup traffic apart).

A party that fails sends an abort to its peer, so the peer raises at once
instead of waiting; every wait has a time-out. The abort carries a generic
code, never the failing party's error text (which can hold secret-dependent
values): details stay on the side that failed.
"""
from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field

import torch

from .context import PeerAborted, ProtocolError, message_bytes

__all__ = ["InProcessChannel", "Endpoint", "LinkStats", "ABORT_CODES"]

ABORT_CODES = {"failed": "it failed (its reasons stay on its side)",
               "interrupted": "it was interrupted"}


class _Abort:
    def __init__(self, code: str):
        if code not in ABORT_CODES:
            raise ValueError(f"unknown abort code {code!r}")
        self.code = code


@dataclass
class LinkStats:
    bytes_sent: int = 0
    setup_bytes_sent: int = 0
    rounds: int = 0
    setup_rounds: int = 0   # steps that carry only once-per-deployment data (a first run's weights opening)
    messages: int = 0
    wait_seconds: float = 0.0   # time blocked waiting for the peer


@dataclass
class Endpoint:
    party: int
    inbox: "queue.Queue"
    outbox: "queue.Queue"
    timeout: float
    stats: LinkStats = field(default_factory=LinkStats)
    record: list | None = None  # (tensor, bit width) of every received message, kept when a test asks

    def step(self, tensors: list[torch.Tensor], bits: list, setup: list, expected: list,
             setup_only: bool = False) -> list[torch.Tensor]:
        """One communication step: send this party's ``tensors`` (possibly none) as one
        message, receive the peer's, check it against ``expected`` (shapes and dtypes).
        Both are sent before either is read, so large messages cannot deadlock.
        A step is one round for both parties; ``setup`` tensors count apart, and so
        does a step that carries nothing else (``setup_only``, both parties agree)."""
        for tensor, width, once in zip(tensors, bits, setup):
            size = message_bytes([tensor], [width])
            if once:
                self.stats.setup_bytes_sent += size
            else:
                self.stats.bytes_sent += size
        if setup_only:
            self.stats.setup_rounds += 1
        else:
            self.stats.rounds += 1
        self.stats.messages += 1
        self.outbox.put(([t.detach() for t in tensors], list(bits)))
        received = self._get()
        if len(received) != len(expected) or any(tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype
                                                 for a, b in zip(received, expected)):
            raise ProtocolError(f"party {self.party}: the peer sent {[tuple(t.shape) for t in received]}, "
                                f"expected {[tuple(t.shape) for t in expected]}")
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
        tensors, bit_widths = item
        if self.record is not None:
            self.record.extend(zip(tensors, bit_widths))
        return tensors

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
