"""CPU backend: native int64 tensors; torch's CPU int64 matmul wraps mod 2^64."""
from __future__ import annotations

from .base import TorchRing

__all__ = ["CpuRing"]


class CpuRing(TorchRing):
    name = "cpu"

    def __init__(self):
        super().__init__("cpu")
