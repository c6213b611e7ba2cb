"""Ring-arithmetic backends: ``cpu`` (reference), ``limb`` (the GPU algorithm on
CPU tensors), ``cuda``."""
from .base import FixedPointRangeError, RingBackend, TorchRing
from .cpu import CpuRing
from .limb import LimbRing, limb_matmul

__all__ = ["RingBackend", "TorchRing", "CpuRing", "LimbRing", "limb_matmul", "FixedPointRangeError", "get_backend",
           "BACKENDS"]

BACKENDS = ("cpu", "limb", "cuda")


def get_backend(name: str = "cpu") -> RingBackend:
    if name == "cpu":
        return CpuRing()
    if name == "limb":
        return LimbRing()
    if name == "cuda":
        from .cuda import CudaRing
        return CudaRing()
    raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
