"""Pseudo-random generation from seeds (ChaCha20 keystream).

Every draw is named by a label, so two holders of the same seed (a party and
the dealer) get the same values without sharing any state or order.
"""
from __future__ import annotations

import hashlib
import math
import os

import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

__all__ = ["Prg", "new_seed"]


def new_seed() -> bytes:
    return os.urandom(32)


class Prg:
    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise ValueError("a PRG seed is 32 bytes")
        self.seed = seed

    def _bytes(self, label: str, count: int) -> bytes:
        nonce = hashlib.blake2b(label.encode(), digest_size=16).digest()
        encryptor = Cipher(algorithms.ChaCha20(self.seed, nonce), mode=None).encryptor()
        return encryptor.update(bytes(count))

    def ring(self, label: str, shape) -> torch.Tensor:
        """Uniform int64 (the ring Z_2^64)."""
        count = math.prod(shape)
        return torch.frombuffer(bytearray(self._bytes(label, 8 * count)), dtype=torch.int64).reshape(tuple(shape))
