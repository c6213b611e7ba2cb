"""The network transport: a party's ``Transport`` over a TLS ``Link``.

Each step is one frame each way, numbered: both parties count steps the same,
so a frame of another step is refused (out of step) before its body is read.
Byte and round counters are those of the in-process transport (payload bytes,
packed; what the cost model predicts).
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import torch

from ..runtime.transport import LinkStats, Piece, compacted
from .certs import client_context, make_certs, server_context
from .link import Link, connect
from .listener import Listener

__all__ = ["NetworkEndpoint", "LoopbackChannel", "loopback_pair", "test_certs"]

class NetworkEndpoint:
    """Party ``party``'s end of a connection to the other party."""

    def __init__(self, party: int, link: Link, net=None, first_step: int = 0):
        """``net``: a ``NetworkShaper`` that delays and rate-limits like a distant peer (None: as fast as
        it goes). ``first_step``: the id of the first step (runs of one session number theirs apart)."""
        self.party, self.link, self.net = party, link, net
        self.stats = LinkStats()
        self.record: list | None = None
        self.steps = first_step

    def step(self, outgoing: list[Piece], incoming: list[Piece], setup_only: bool = False,
             what: str = "") -> list[torch.Tensor]:
        self.stats.count(outgoing, setup_only, incoming)
        start = time.perf_counter()
        received = self.link.exchange(self.steps, outgoing, incoming, what, self.net)
        self.steps += 1
        self.stats.wait_seconds += time.perf_counter() - start
        if self.record is not None:
            self.record.extend((compacted(tensor, piece), piece.bits) for tensor, piece in zip(received, incoming))
        return received

    def abort(self, code: str = "failed") -> None:
        self.link.abort(code)

    def close(self) -> None:
        self.link.close()


_CERTS: dict[str, Path] = {}
_CERTS_LOCK = threading.Lock()


def test_certs() -> Path:
    """A throw-away certificate set for this process (loopback pairs in tests and ``mpcc.run``)."""
    with _CERTS_LOCK:
        if "dir" not in _CERTS:
            _CERTS["dir"] = make_certs(Path(tempfile.mkdtemp(prefix="mpcc-certs-")))
        return _CERTS["dir"]


test_certs.__test__ = False   # not a pytest test


def loopback_pair(timeout: float = 120.0, certs: str | Path | None = None, net=None) -> tuple[NetworkEndpoint,
                                                                                               NetworkEndpoint]:
    """Two endpoints joined by a real TLS connection on 127.0.0.1 (client, server): the
    network transport in one process, for tests and ``mpcc.run(..., transport="tls")``."""
    certs = certs or test_certs()
    listener = Listener("127.0.0.1", 0, server_context(certs, "server"), ("client",), timeout=timeout)
    try:
        client_link = connect("127.0.0.1", listener.port, client_context(certs, "client"), "server", timeout=timeout)
        server_link = listener.accept(timeout)
    finally:
        listener.stop_listening()
    server_link.owns_io = True   # the listener's loop now serves this one connection
    shaper = (lambda: None) if net is None else (lambda: net.fresh())
    return NetworkEndpoint(0, client_link, shaper()), NetworkEndpoint(1, server_link, shaper())


class LoopbackChannel:
    """``InProcessChannel``'s face over a real TLS connection on 127.0.0.1."""

    def __init__(self, timeout: float = 120.0, net=None):
        self.endpoints = loopback_pair(timeout, net=net)

    def interrupt(self) -> None:
        for endpoint in self.endpoints:
            endpoint.abort("interrupted")

    def close(self) -> None:
        for endpoint in self.endpoints:
            endpoint.close()
