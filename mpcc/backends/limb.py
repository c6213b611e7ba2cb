"""Limb-split matmul: exact int64 (mod 2^64) products from float64 GEMMs.

CUDA has no int64 GEMM, so each operand is split into four 16-bit limbs.
A product of two limbs is below 2^32, and a sum of K of them stays below
2^53 (float64's exact-integer range) while K <= 2^21. Only limb pairs with
i + j < 4 matter modulo 2^64: ten GEMMs, recombined with shifts. The same
code runs on CPU tensors (backend ``limb``) so tests check it bit-exact
against int64 matmul. (CrypTen does the same with float64 limbs.)
"""
from __future__ import annotations

import torch

from .base import TorchRing

__all__ = ["LimbRing", "limb_matmul", "LIMB_BITS", "MAX_INNER_DIM"]

LIMB_BITS = 16
LIMBS = 64 // LIMB_BITS
MAX_INNER_DIM = 1 << (53 - 2 * LIMB_BITS)


def _limbs(x: torch.Tensor) -> list[torch.Tensor]:
    mask = (1 << LIMB_BITS) - 1
    return [((x >> (LIMB_BITS * i)) & mask).to(torch.float64) for i in range(LIMBS)]


def limb_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` modulo 2^64 for int64 tensors, via float64 limb products."""
    inner = a.shape[-1]
    if inner > MAX_INNER_DIM:
        raise ValueError(f"limb matmul is exact only for inner dimension <= {MAX_INNER_DIM}, got {inner}")
    a_limbs, b_limbs = _limbs(a), _limbs(b)
    result = None
    for i in range(LIMBS):
        for j in range(LIMBS - i):
            part = torch.matmul(a_limbs[i], b_limbs[j]).to(torch.int64) << (LIMB_BITS * (i + j))
            result = part if result is None else result + part
    return result


class LimbRing(TorchRing):
    name = "limb"

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return limb_matmul(a, b)
