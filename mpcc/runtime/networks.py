"""Network profiles for the cost model's time estimate: named ones and
``BANDWIDTH,LATENCY`` strings such as ``"100Mbps,40ms"``."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Network", "NETWORKS", "parse_network", "NETWORK_FORMS"]


@dataclass(frozen=True)
class Network:
    """A link between client and server: bandwidth in bits per second, one-way
    latency in seconds. A communication round costs one one-way latency."""
    name: str
    bandwidth_bps: float
    latency_s: float

    @property
    def bytes_per_second(self) -> float:
        return self.bandwidth_bps / 8

    def describe(self) -> str:
        if math.isinf(self.bandwidth_bps):
            return f"{self.name} (no network cost)"
        return f"{self.name} ({_rate(self.bandwidth_bps)}, {self.latency_s * 1e3:g} ms one-way)"


NETWORKS = {
    "lan": Network("lan", 1e9, 0.5e-3),
    "wan": Network("wan", 100e6, 40e-3),
    "local": Network("local", math.inf, 0.0),   # both parties in one process: compute only
}
NETWORK_FORMS = ("lan (1 Gbps, 0.5 ms), wan (100 Mbps, 40 ms), local (no network cost), or BANDWIDTH,LATENCY "
                 "such as 1Gbps,0.5ms or 1e9,0.0005 (plain numbers: bits per second, seconds one-way)")

# unit -> factor to bits per second / to seconds; a bare number takes the factor of ""
_RATES = {"": 1.0, "bps": 1.0, "kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9}
_TIMES = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_QUANTITY = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_network(spec: str | Network) -> Network:
    """A profile by name, or ``BANDWIDTH,LATENCY``; anything else is a ValueError
    that lists the valid forms.

    Example:
        >>> parse_network("100Mbps,40ms") == Network("100Mbps,40ms", 1e8, 0.04)
        True
        >>> parse_network("wan").latency_s
        0.04
    """
    if isinstance(spec, Network):
        return spec
    text = str(spec).strip()
    if text in NETWORKS:
        return NETWORKS[text]
    parts = text.split(",")
    if len(parts) == 2:
        bandwidth, latency = _quantity(parts[0], _RATES), _quantity(parts[1], _TIMES)
        if bandwidth is not None and latency is not None and bandwidth > 0:
            return Network(text, bandwidth, latency)
    raise ValueError(f"unknown network {text!r}: use {NETWORK_FORMS}")


def _quantity(text: str, units: dict[str, float]) -> float | None:
    """``"40ms"`` -> 0.04 (units are case-sensitive: ``MBps`` would be bytes, and is refused)."""
    match = _QUANTITY.fullmatch(text)
    if match is None or match.group(2) not in units:
        return None
    return float(match.group(1)) * units[match.group(2)]


def _rate(bps: float) -> str:
    """The largest unit that keeps the number at least 1: 1e8 -> ``100 Mbps``."""
    factor, unit = max(((f, u) for u, f in _RATES.items() if u and (bps >= f or f == 1.0)))
    return f"{bps / factor:g} {unit}"
