"""Network emulation in the transport: ``--net lan|wan|BANDWIDTH,LATENCY``
makes a run on one machine take the wall time of two distant machines.

Each party shapes what it sends: a message leaves when the link is free
(messages queue behind each other at the bandwidth) and arrives one one-way
latency after its last byte left. So a step costs one latency plus its bytes
at the bandwidth, as the cost model counts a round (``runtime/networks.py``).
Handshakes and dealer traffic are not shaped.
"""
from __future__ import annotations

import time

from ..runtime.networks import Network, parse_network

__all__ = ["NetworkShaper"]


class NetworkShaper:
    """One direction of an emulated link (each party shapes its own sends)."""

    def __init__(self, network: str | Network):
        self.network = parse_network(network)
        self.free_at = 0.0   # when the link has sent everything queued so far (time.monotonic)

    def fresh(self) -> "NetworkShaper":
        return NetworkShaper(self.network)

    def send_delay(self, size: int) -> float:
        """Seconds to hold a message of ``size`` bytes, queued now, before handing it over."""
        now = time.monotonic()
        start = max(now, self.free_at)
        self.free_at = start + size / self.network.bytes_per_second
        return self.free_at + self.network.latency_s - now
