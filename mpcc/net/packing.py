"""Packing int64 words to the bits that matter, and back.

A message tensor carries ``bits`` meaningful bits per word: the low ones, or
the positions of a ``layout`` mask (the comparison tree's words keep their
lanes at strided positions). ``pack`` sends exactly ceil(n * bits / 8)
bytes, the figure the cost model charges; ``unpack`` restores words with
every other bit zero (protocols never read them: a test runs every protocol
over a packing transport to hold them to it).

Widths that are whole bytes are cut by byte slicing; one bit per word goes
through numpy's bit packing; other widths are packed 64 words at a time into
``bits`` words by shifts (64 vectorised steps, whatever the count). A layout
is first compacted, run of set bits by run, to the low bits.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["pack", "unpack", "packed_size", "runs_of"]

@lru_cache(maxsize=256)
def runs_of(layout: int | None, bits: int) -> tuple[tuple[int, int], ...] | None:
    """The runs (start, length) of set bits of ``layout`` (None for the low ``bits``),
    which must number ``bits`` in all."""
    if layout is None:
        return None
    value = layout & ((1 << 64) - 1)
    runs, position = [], 0
    while position < 64:
        if value >> position & 1:
            length = 0
            while position + length < 64 and value >> (position + length) & 1:
                length += 1
            runs.append((position, length))
            position += length
        else:
            position += 1
    if sum(length for _, length in runs) != bits:
        raise ValueError(f"layout mask has {sum(length for _, length in runs)} bits set, the message says {bits}")
    return tuple(runs)


def packed_size(count: int, bits: int) -> int:
    return math.ceil(count * bits / 8)


def _mask(length: int) -> np.uint64:
    return np.uint64((1 << length) - 1)


def _move_runs(words: np.ndarray, runs, down: bool) -> np.ndarray:
    """The bits of ``runs`` moved down to the low bits, in order (``down``), or back (every other bit zero)."""
    out = np.zeros(len(words), dtype=np.uint64)
    at = 0
    for start, length in runs:
        source, target = (start, at) if down else (at, start)
        out |= ((words >> np.uint64(source)) & _mask(length)) << np.uint64(target)
        at += length
    return out


def _pack_low(values: np.ndarray, bits: int) -> np.ndarray:
    """Words whose bits at and above ``bits`` are zero, as a little-endian stream of ``bits`` each."""
    count = len(values)
    blocks = -(-count // 64)
    padded = np.zeros(blocks * 64, dtype=np.uint64)
    padded[:count] = values
    columns = padded.reshape(blocks, 64).T.copy()   # value j of every block, contiguous
    out = np.zeros((bits, blocks), dtype=np.uint64)   # word k of every block's ``bits`` words
    for j in range(64):
        word, offset = divmod(j * bits, 64)
        out[word] |= columns[j] << np.uint64(offset)
        if offset + bits > 64:
            out[word + 1] |= columns[j] >> np.uint64(64 - offset)
    return out.T.copy().reshape(-1).view(np.uint8)[: packed_size(count, bits)]


def _unpack_low(data: np.ndarray, count: int, bits: int) -> np.ndarray:
    blocks = -(-count // 64)
    raw = np.zeros(blocks * bits * 8, dtype=np.uint8)
    raw[: len(data)] = data
    words = raw.view(np.uint64).reshape(blocks, bits).T.copy()
    columns = np.empty((64, blocks), dtype=np.uint64)
    keep = _mask(bits)
    for j in range(64):
        word, offset = divmod(j * bits, 64)
        value = words[word] >> np.uint64(offset)
        if offset + bits > 64:
            value |= words[word + 1] << np.uint64(64 - offset)
        columns[j] = value & keep
    return columns.T.reshape(-1)[:count]


def _words(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's int64 words as uint64 (a view where it can)."""
    flat = tensor.detach().reshape(-1).to("cpu", torch.int64).contiguous().numpy()
    return flat.view(np.uint64)


def pack(tensor: torch.Tensor, bits: int, layout: int | None = None) -> memoryview:
    """The ``bits`` meaningful bits of every word of ``tensor``, back to back (little-endian bit order)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"a word carries 1 to 64 bits, not {bits}")
    words = _words(tensor)
    runs = runs_of(layout, bits)
    if runs is not None:
        words = _move_runs(words, runs, down=True)
    if bits == 64:
        return memoryview(words.view(np.uint8))
    if bits % 8 == 0:
        return memoryview(np.ascontiguousarray(words.view(np.uint8).reshape(-1, 8)[:, : bits // 8]).reshape(-1))
    if bits == 1:
        return memoryview(np.packbits((words & np.uint64(1)).astype(np.uint8), bitorder="little"))
    return memoryview(_pack_low(words & _mask(bits), bits))


def unpack(data, shape, bits: int, layout: int | None = None) -> torch.Tensor:
    """Words of ``shape`` from ``pack``'s bytes; bits not carried are zero."""
    count = math.prod(shape)
    if len(data) != packed_size(count, bits):
        raise ValueError(f"{len(data)} bytes for {count} words of {bits} bits (expected "
                         f"{packed_size(count, bits)})")
    raw = np.frombuffer(data, dtype=np.uint8)
    if bits == 64:
        words = raw.copy().view(np.uint64)
    elif bits % 8 == 0:
        table = np.zeros((count, 8), dtype=np.uint8)
        table[:, : bits // 8] = raw.reshape(count, bits // 8)
        words = table.reshape(-1).view(np.uint64)
    elif bits == 1:
        words = np.unpackbits(raw, count=count, bitorder="little").astype(np.uint64)
    else:
        words = _unpack_low(raw, count, bits)
    runs = runs_of(layout, bits)
    if runs is not None:
        words = _move_runs(words, runs, down=False)
    return torch.from_numpy(words.view(np.int64)).reshape(tuple(shape))
