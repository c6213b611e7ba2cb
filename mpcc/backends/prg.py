"""Pseudo-random generation from seeds: AES-256 in counter mode (AES-NI).

Every draw is named by a label (hashed into the counter block), so two
holders of the same seed (a party and the dealer) get the same values
without sharing any state or order. Streams of different labels overlap
with negligible probability (random 128-bit starting counters).
"""
from __future__ import annotations

import hashlib
import math
import os

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["Prg", "new_seed"]


def new_seed() -> bytes:
    return os.urandom(32)


class Prg:
    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise ValueError("a PRG seed is 32 bytes")
        self.seed = seed

    def ring(self, label: str, shape) -> torch.Tensor:
        """Uniform int64 (the ring Z_2^64)."""
        count = 8 * math.prod(shape)
        if count == 0:
            return torch.zeros(tuple(shape), dtype=torch.int64)
        counter = hashlib.blake2b(label.encode(), digest_size=16).digest()
        buffer = bytearray(count + 16)
        encryptor = Cipher(algorithms.AES(self.seed), modes.CTR(counter)).encryptor()
        view = memoryview(buffer)
        encryptor.update_into(view[:count], buffer)  # keystream XOR zeros, in place
        return torch.frombuffer(buffer, dtype=torch.int64, count=count // 8).reshape(tuple(shape))
