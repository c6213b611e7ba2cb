"""The backend interface: ring arithmetic over Z_2^64 on torch tensors.

Shares are int64 tensors; torch's int64 add, mul and shifts wrap modulo 2^64
on every device, so most methods are plain torch. What differs is matmul
(CUDA has no int64 GEMM) and where tensors live. Backends are passed
explicitly, never global.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch

__all__ = ["RingBackend", "TorchRing", "FixedPointRangeError", "RING_BITS"]

RING_BITS = 64


class FixedPointRangeError(ValueError):
    """A real is too large (or not finite) for the fixed-point encoding."""


@runtime_checkable
class RingBackend(Protocol):
    name: str
    device: torch.device

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor: ...
    def encode(self, x: torch.Tensor, frac_bits: int, name: str = "tensor") -> torch.Tensor: ...
    def decode(self, x: torch.Tensor, frac_bits: int) -> torch.Tensor: ...
    def rshift_logical(self, x: torch.Tensor, bits: int) -> torch.Tensor: ...
    def to_device(self, x: torch.Tensor) -> torch.Tensor: ...


class TorchRing:
    """Reference semantics for every backend; subclasses change matmul or device."""
    name = "cpu"

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = torch.device(device)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(a, b)

    def encode(self, x: torch.Tensor, frac_bits: int, name: str = "tensor") -> torch.Tensor:
        """round(x * 2^f) as int64; refuses |x| >= 2^(62-f) and non-finite values.

        float32 input is encoded as it is: scaling by 2^f and rounding are
        exact in float32 in this range, so the result equals the float64 one
        at a third of the time (BERT-base's weights: 0.9 -> 0.3 s).
        """
        x = torch.as_tensor(x)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float64)
        limit = 2.0 ** (62 - frac_bits)
        if x.numel():
            low, high = (float(v) for v in torch.aminmax(x))
            if not (math.isfinite(low) and math.isfinite(high)):
                raise FixedPointRangeError(f"{name}: contains inf or nan, which fixed point cannot encode")
            peak = max(-low, high)
            if peak >= limit:
                raise FixedPointRangeError(f"{name}: magnitude {peak:.4g} does not fit fixed point with {frac_bits} "
                                           f"fractional bits (|x| must be < 2^{62 - frac_bits} = {limit:.4g})")
        return torch.round(x * (2.0 ** frac_bits)).to(torch.int64).to(self.device)

    def decode(self, x: torch.Tensor, frac_bits: int) -> torch.Tensor:
        return x.to(torch.float64) / (2.0 ** frac_bits)

    def rshift_logical(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits == 0:
            return x
        return (x >> bits) & ((1 << (RING_BITS - bits)) - 1)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device)
