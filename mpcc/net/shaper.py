"""Network emulation in the transport: ``--net lan|wan|BANDWIDTH,LATENCY``
makes a run on one machine take the wall time of two distant machines.

Each party shapes what it receives: a message sent at time t (its frame
carries t) enters the emulated link when the link is free (messages queue
behind each other at the bandwidth) and arrives one one-way latency after its
last byte went in. The real loopback transfer happens meanwhile, so it is not
added on top. A step then costs one latency plus its bytes at the bandwidth,
as the cost model counts a round (``runtime/networks.py``); the busier
direction of each step sets its pace. Both parties must run on one host (they
share ``time.monotonic``); pass ``--net`` to both, or one direction stays
fast. Handshakes and dealer traffic are not shaped.
"""
from __future__ import annotations

from ..runtime.networks import Network, parse_network

__all__ = ["NetworkShaper"]


class NetworkShaper:
    """One direction of an emulated link (each party shapes what it receives)."""

    def __init__(self, network: str | Network):
        self.network = parse_network(network)
        self.free_at = 0.0   # when the link has sent everything queued so far (time.monotonic)

    def fresh(self) -> "NetworkShaper":
        return NetworkShaper(self.network)

    def arrival(self, sent_at: float, size: int) -> float:
        """When a message of ``size`` bytes sent at ``sent_at`` (``time.monotonic``) arrives."""
        start = max(sent_at, self.free_at)
        self.free_at = start + size / self.network.bytes_per_second
        return self.free_at + self.network.latency_s
