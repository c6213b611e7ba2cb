"""One party's side of a run over a connection: the pieces the server and the
client share (running the plan, checking dealt material, public inputs)."""
from __future__ import annotations

import time

import torch
from safetensors.torch import load, save

from ..runtime.context import PartyContext
from ..runtime.dealer import TAG, material_tag
from ..runtime.executor import execute
from .endpoint import NetworkEndpoint
from .link import LinkError

__all__ = ["run_party", "check_tag", "RUN_STEPS", "encode_tensors", "decode_tensors"]

RUN_STEPS = 1 << 32   # step ids of run k start at k * RUN_STEPS: a frame of another run is out of step


def run_party(plan, party: int, backend, link, run_index: int, seed: bytes, stored: dict, state, label: str,
              inputs: dict, weights: dict | None, net=None):
    """Run ``plan`` as ``party`` over ``link``; returns (its outputs, its endpoint's stats, seconds)."""
    endpoint = NetworkEndpoint(party, link, None if net is None else net.fresh(), first_step=run_index * RUN_STEPS)
    ctx = PartyContext(party, backend, plan.frac_bits, endpoint, seed, stored, state, label)
    start = time.perf_counter()
    with torch.no_grad():
        outputs = execute(plan.graph, ctx, inputs, weights, overflow_check=plan.overflow_check)
    return outputs, endpoint.stats, time.perf_counter() - start


def check_tag(stored: dict, seed: bytes, label: str, source: str) -> None:
    """Material must carry the tag only the holder of this party's seed makes for its label."""
    tag = stored.get(TAG, [None])[0]
    if tag is None or not torch.equal(tag.cpu(), material_tag(seed, label)):
        raise LinkError(f"{source}: material {label[:12]!r} was not dealt for this party's seed")


def encode_tensors(tensors: dict) -> bytes:
    """Named tensors as safetensors bytes (public inputs; never pickle)."""
    return save({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()})


def decode_tensors(data, names: list[str]) -> dict:
    try:
        tensors = load(bytes(data))
    except Exception as error:
        raise LinkError(f"tensors that are not readable ({error})") from None
    if sorted(tensors) != sorted(names):
        raise LinkError(f"tensors {sorted(tensors)}, expected {sorted(names)}")
    return tensors
