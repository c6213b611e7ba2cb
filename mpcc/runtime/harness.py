"""Run one protocol function on secret-shared inputs, both parties for real.

For tests and protocol development: shares the given plaintext reals,
deals the protocol's material, runs party 0 and party 1 in threads, and
returns the reconstructed result with what the transport and the cost model
counted.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from ..backends import get_backend
from ..backends.prg import new_seed
from ..ops.wire import share_of
from .context import PartyContext, SessionState
from .schedule import run_flow
from .shape_context import CostContext, DealerContext, replay
from .transport import open_channel

__all__ = ["run_protocol", "ProtocolRun"]


@dataclass
class ProtocolRun:
    result: torch.Tensor          # reconstructed ring value (int64)
    decoded: torch.Tensor         # result / 2^f as float64
    rounds: tuple[int, int]
    bytes_sent: tuple[int, int]
    cost_rounds: tuple[int, int]
    cost_bytes: tuple[int, int]
    dealt_bytes: tuple[int, int]
    cost_offline: tuple[int, int]
    received: tuple[list, list]


def run_protocol(fn, *values: torch.Tensor, frac_bits: int = 16, backend: str = "cpu", integer: bool = False,
                 record: bool = False, seed: int = 0, timeout: float = 60.0, xor_result: bool = False,
                 transport: str | None = None) -> ProtocolRun:
    """``fn(ctx, *shares)`` on shares of ``values`` (reals, or ints with ``integer``);
    ``xor_result`` when the protocol returns an XOR sharing; ``transport`` as ``Session``'s."""
    ring = get_backend(backend)
    generator = torch.Generator().manual_seed(seed)
    shares = ([], [])
    for value in values:
        encoded = ring.to_device(value.to(torch.int64)) if integer else ring.encode(value, frac_bits)
        mask = ring.to_device(torch.randint(-2**63, 2**63 - 1, tuple(value.shape), dtype=torch.int64,
                                            generator=generator))
        shares[0].append(mask)
        shares[1].append(encoded - mask)
    metas = [torch.empty(v.shape, dtype=torch.int64, device="meta") for v in values]
    seeds = (new_seed(), new_seed())
    dealer = DealerContext(ring, frac_bits)
    dealer.begin("p")
    with torch.no_grad():
        node = dealer.for_node("p")
        run_flow(node, fn(node, *metas))
        stored, dealt_bytes = replay(dealer.tape, ring, seeds, "test", exported=frozenset(dealer.exported))
    costs = []
    for party in (0, 1):
        cost = CostContext(party, ring, frac_bits)
        cost.begin("p")
        node = cost.for_node("p")
        run_flow(node, fn(node, *metas))
        costs.append(cost.by_node.get("p"))
    channel = open_channel(transport, timeout)
    outputs, errors = [None, None], [None, None]
    for endpoint in channel.endpoints:
        endpoint.record = [] if record else None

    def main(party):
        ctx = PartyContext(party, ring, frac_bits, channel.endpoints[party], seeds[party], stored[party],
                           SessionState(), "test").for_node("p")
        try:
            with torch.no_grad():
                outputs[party] = share_of(ctx, run_flow(ctx, fn(ctx, *shares[party]))[0])   # a wire: its share
        except BaseException as error:
            errors[party] = error
            channel.endpoints[party].abort()
    threads = [threading.Thread(target=main, args=(p,)) for p in (0, 1)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        channel.close()
    for error in errors:
        if error is not None:
            raise error
    if xor_result:
        result = (outputs[0] ^ outputs[1]).to(torch.int64)
    else:
        result = outputs[0] + outputs[1]
    stats = [e.stats for e in channel.endpoints]
    zero = type("Zero", (), {"rounds": 0, "online_bytes": 0, "offline_bytes": 0})
    costs = [c or zero for c in costs]
    return ProtocolRun(result.cpu(), result.cpu().to(torch.float64) / 2 ** frac_bits,
                       tuple(s.rounds for s in stats), tuple(s.bytes_sent for s in stats),
                       tuple(c.rounds for c in costs), tuple(c.online_bytes for c in costs),
                       tuple(dealt_bytes), tuple(c.offline_bytes for c in costs),
                       tuple(e.record or [] for e in channel.endpoints))
