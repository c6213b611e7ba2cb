"""CUDA backend: shares stay resident on the GPU; matmul by float64 limbs."""
from __future__ import annotations

import torch

from .limb import LimbRing

__all__ = ["CudaRing"]


class CudaRing(LimbRing):
    name = "cuda"

    def __init__(self, device: str = "cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("backend 'cuda' needs a CUDA GPU; use 'cpu' (or 'limb' to test the GPU algorithm on CPU)")
        super().__init__(device)
