"""What travels on a connection: frames of a fixed 32-byte header and a body.

    header: magic "MPCC", version (u8), kind (u8), 2 reserved bytes,
            step id (u64), body length (u64), send time (f64), little-endian

The send time (``time.monotonic()`` of the sender) serves network emulation
only: a receiver that emulates a link delivers the frame when the link would
have (``shaper.py``; both parties on one host share that clock).

A ``step`` frame is one communication step's message: a tensor count (u32),
one descriptor per tensor (dtype, bits per word, number of dimensions, the
layout mask of strided words, the dimensions), then each tensor's payload,
packed to its bits (``packing.py``). Both parties run the same plan, so a
receiver knows the exact descriptors and length it must get: anything else
(a wrong step id, a wrong shape or width, a longer body, a foreign magic) is
refused before the body is read. ``hello`` frames carry the handshake as
JSON; ``abort`` frames a generic code only. Never pickle.
"""
from __future__ import annotations

import json
import struct
import time

import torch

from ..runtime.transport import Piece
from . import packing

__all__ = ["HEADER", "KINDS", "VERSION", "Piece", "FrameError", "header", "parse_header", "describe",
           "payload_views", "body_length", "decode_payloads", "encode_json", "decode_json"]

MAGIC = b"MPCC"
VERSION = 1
HEADER = struct.Struct("<4sBBHQQd")
KINDS = {"step": 1, "abort": 2, "hello": 3, "material": 4, "inputs": 5}
KIND_NAMES = {code: name for name, code in KINDS.items()}
DTYPES = {torch.int64: 1, torch.int32: 2, torch.int16: 3, torch.int8: 4, torch.uint8: 5, torch.bool: 6,
          torch.float64: 7, torch.float32: 8}
_DESCRIPTOR = struct.Struct("<BBBxQ")   # dtype, bits, ndim, layout mask (0: the low bits)
MAX_JSON = 1 << 20


class FrameError(ValueError):
    """Bytes that are not the frame this side expected."""


def header(kind: str, step: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, KINDS[kind], 0, step, length, time.monotonic())


def parse_header(data: bytes) -> tuple[str, int, int, float]:
    """(kind, step id, body length, send time) of a header; a foreign or damaged one is a ``FrameError``."""
    magic, version, kind, _, step, length, sent_at = HEADER.unpack(data)
    if magic != MAGIC:
        raise FrameError(f"not an mpcc frame (starts with {magic!r})")
    if version != VERSION:
        raise FrameError(f"frame version {version}, this side speaks {VERSION}")
    if kind not in KIND_NAMES:
        raise FrameError(f"unknown frame kind {kind}")
    return KIND_NAMES[kind], step, length, sent_at


def describe(pieces: list[Piece]) -> bytes:
    """The descriptor section of a step frame."""
    parts = [struct.pack("<I", len(pieces))]
    for piece in pieces:
        dtype = DTYPES.get(piece.tensor.dtype)
        if dtype is None:
            raise FrameError(f"cannot send tensors of dtype {piece.tensor.dtype}")
        layout = 0 if piece.layout is None else piece.layout & ((1 << 64) - 1)
        parts.append(_DESCRIPTOR.pack(dtype, piece.width, piece.tensor.dim(), layout))
        parts.append(struct.pack(f"<{piece.tensor.dim()}Q", *piece.tensor.shape))
    return b"".join(parts)


def body_length(pieces: list[Piece]) -> int:
    return len(describe(pieces)) + sum(piece.size for piece in pieces)


def payload_views(pieces: list[Piece]) -> list[memoryview]:
    """Each piece's payload, packed to its bits."""
    views = []
    for piece in pieces:
        if piece.tensor.dtype == torch.int64:
            views.append(packing.pack(piece.tensor, piece.width, piece.layout))
        else:
            views.append(memoryview(piece.tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return views


def decode_payloads(body, expected: list[Piece], offset: int) -> list[torch.Tensor]:
    """The received tensors from ``body`` (from ``offset``), on the CPU (the party moves them to its device)."""
    tensors, at = [], offset
    view = memoryview(body)
    for piece in expected:
        data = view[at: at + piece.size]
        at += piece.size
        like = piece.tensor
        if like.dtype == torch.int64:
            tensor = packing.unpack(data, tuple(like.shape), piece.width, piece.layout)
        else:
            tensor = torch.frombuffer(bytearray(data), dtype=like.dtype).reshape(like.shape) if like.numel() \
                else torch.empty(like.shape, dtype=like.dtype)
        tensors.append(tensor)
    return tensors


def shapes_in(descriptors: bytes) -> list[tuple]:
    """The shapes a descriptor section lists (for error messages); [] if it cannot be read."""
    try:
        (count,) = struct.unpack_from("<I", descriptors, 0)
        at, shapes = 4, []
        for _ in range(min(count, 64)):
            _, bits, ndim, _ = _DESCRIPTOR.unpack_from(descriptors, at)
            at += _DESCRIPTOR.size
            shapes.append(struct.unpack_from(f"<{ndim}Q", descriptors, at))
            at += 8 * ndim
        return shapes
    except struct.error:
        return []


def encode_json(value) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def decode_json(body: bytes):
    if len(body) > MAX_JSON:
        raise FrameError(f"a handshake of {len(body)} bytes (at most {MAX_JSON})")
    try:
        value = json.loads(bytes(body).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FrameError(f"a handshake that is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise FrameError("a handshake that is not a JSON object")
    return value
