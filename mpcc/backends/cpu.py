"""CPU backend: native int64 tensors; torch's CPU int64 matmul wraps mod 2^64."""
from __future__ import annotations

import torch

from .base import TorchRing

__all__ = ["CpuRing", "INNER_CHUNK"]

INNER_CHUNK = 512   # a long inner axis is summed in slices of this many (a slice's operands stay in cache)


class CpuRing(TorchRing):
    name = "cpu"

    def __init__(self):
        super().__init__("cpu")

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """a @ b mod 2^64; past 2 INNER_CHUNK on the inner axis, as a sum of products of
        slices: torch's int64 kernel has no cache blocking, and on this 2-core machine a
        BERT FFN-out product (inner 3072) takes 12 ms so instead of 14, the one-hot
        embedding's (inner 30522) 115 ms instead of 190. Wrapping sums: the same result."""
        inner = a.shape[-1]
        if inner <= 2 * INNER_CHUNK or a.is_meta or b.dim() < 2:
            return torch.matmul(a, b)
        out = torch.matmul(a[..., :INNER_CHUNK], b[..., :INNER_CHUNK, :])
        for start in range(INNER_CHUNK, inner, INNER_CHUNK):
            out += torch.matmul(a[..., start:start + INNER_CHUNK], b[..., start:start + INNER_CHUNK, :])
        return out
