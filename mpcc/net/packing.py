"""Packing int64 words to the bits that matter, and back.

A message tensor carries ``bits`` meaningful bits per word: the low ones, or
the positions of a ``layout`` mask (the comparison tree's words keep their
lanes at strided positions). ``pack`` sends exactly ceil(n * bits / 8)
bytes, the figure the cost model charges; ``unpack`` restores words with
every other bit zero (protocols never read them: a test runs every protocol
over a packing transport to hold them to it).

Widths that are whole bytes are cut by byte slicing; other widths and layouts
go through bit arrays, in slices of ``SLICE`` words to bound memory.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["pack", "unpack", "packed_size", "positions_of"]

SLICE = 1 << 20   # words per slice of the bit-array path (64 MiB of bits at most)


def positions_of(layout: int | None, bits: int) -> np.ndarray | None:
    """The bit positions a word carries: None for the low ``bits`` (fast paths), else
    the set bits of ``layout`` (an int64 mask), which must number ``bits``."""
    if layout is None:
        return None
    value = layout & ((1 << 64) - 1)
    positions = np.array([p for p in range(64) if value >> p & 1], dtype=np.int64)
    if len(positions) != bits:
        raise ValueError(f"layout mask has {len(positions)} bits set, the message says {bits}")
    return positions


def packed_size(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def _words(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's int64 words as little-endian bytes, one row per word."""
    flat = tensor.detach().reshape(-1).to("cpu", torch.int64).contiguous().numpy()
    return flat.astype("<i8", copy=False).view(np.uint8).reshape(-1, 8)


def pack(tensor: torch.Tensor, bits: int, layout: int | None = None) -> memoryview:
    """The ``bits`` meaningful bits of every word of ``tensor``, back to back (little-endian bit order)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"a word carries 1 to 64 bits, not {bits}")
    rows = _words(tensor)
    positions = positions_of(layout, bits)
    if positions is None and bits == 64:
        return memoryview(rows.reshape(-1))
    if positions is None and bits % 8 == 0:
        return memoryview(np.ascontiguousarray(rows[:, : bits // 8]).reshape(-1))
    columns = positions if positions is not None else slice(0, bits)
    out = bytearray(packed_size(len(rows), bits))
    at = 0
    for start in range(0, len(rows), SLICE):   # SLICE is a multiple of 8: slices end on whole bytes
        chunk = np.unpackbits(rows[start: start + SLICE], axis=1, bitorder="little")[:, columns]
        packed = np.packbits(chunk.reshape(-1), bitorder="little")
        out[at: at + len(packed)] = packed.tobytes()
        at += len(packed)
    return memoryview(out)


def unpack(data, shape, bits: int, layout: int | None = None) -> torch.Tensor:
    """Words of ``shape`` from ``pack``'s bytes; bits not carried are zero."""
    count = math.prod(shape)
    if len(data) != packed_size(count, bits):
        raise ValueError(f"{len(data)} bytes for {count} words of {bits} bits (expected "
                         f"{packed_size(count, bits)})")
    raw = np.frombuffer(data, dtype=np.uint8)
    positions = positions_of(layout, bits)
    if positions is None and bits == 64:
        words = raw.copy()
    else:
        words = np.zeros((count, 8), dtype=np.uint8)
        if positions is None and bits % 8 == 0:
            words[:, : bits // 8] = raw.reshape(count, bits // 8)
        else:
            columns = positions if positions is not None else np.arange(bits)
            for start in range(0, count, SLICE):
                stop = min(count, start + SLICE)
                chunk_bits = np.unpackbits(raw[start * bits // 8: (stop * bits + 7) // 8], bitorder="little")
                table = np.zeros((stop - start, 64), dtype=np.uint8)
                table[:, columns] = chunk_bits[: (stop - start) * bits].reshape(-1, bits)
                words[start:stop] = np.packbits(table, axis=1, bitorder="little")
    return torch.from_numpy(words.reshape(-1).view("<i8").astype(np.int64, copy=False)).reshape(tuple(shape))
