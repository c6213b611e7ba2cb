"""Packing words to their meaningful bits: exact sizes, exact round trips, every width and layout."""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import example, given, strategies as st

from mpcc.net import packing


def _reference(words: list[int], bits: int, layout: int | None) -> bytes:
    """Bit by bit: each word's carried bits, lowest position first, into one little-endian stream."""
    positions = [p for p in range(64) if (layout if layout is not None else (1 << bits) - 1) >> p & 1]
    stream = [(w >> p) & 1 for w in words for p in positions]
    return np.packbits(np.array(stream, dtype=np.uint8), bitorder="little").tobytes()


@st.composite
def messages(draw):
    bits = draw(st.integers(1, 64))
    layout = None
    if draw(st.booleans()):
        layout = sum(1 << p for p in draw(st.permutations(range(64)))[:bits])
    count = draw(st.one_of(st.integers(0, 200), st.sampled_from([63, 64, 65, 127, 128, 129, 1000])))
    words = draw(st.lists(st.integers(0, 2 ** 64 - 1), min_size=count, max_size=count))
    return bits, layout, words


@given(messages())
@example((1, None, [1, 0, 3] * 50))
@example((64, None, [2 ** 64 - 1, 0, 2 ** 63]))
@example((20, None, [2 ** 64 - 1] * 130))
@example((48, (2 ** 64 - 1) ^ 0xFFFF, [2 ** 64 - 1] * 70))
def test_pack_is_exact_in_size_and_round_trips(message):
    bits, layout, words = message
    signed = torch.tensor([w - 2 ** 64 if w >= 2 ** 63 else w for w in words], dtype=torch.int64)
    data = packing.pack(signed, bits, layout)
    assert len(data) == packing.packed_size(len(words), bits)
    assert bytes(data) == _reference(words, bits, layout)
    keep = layout if layout is not None else (1 << bits) - 1
    back = packing.unpack(bytes(data), (len(words),), bits, layout)
    assert [w & (2 ** 64 - 1) for w in back.tolist()] == [w & keep for w in words]


def test_a_layout_must_carry_as_many_bits_as_the_message_says():
    import pytest
    with pytest.raises(ValueError, match="layout mask has 2 bits set, the message says 3"):
        packing.pack(torch.zeros(4, dtype=torch.int64), 3, 0b101)
    with pytest.raises(ValueError, match="expected 3"):
        packing.unpack(b"\x00" * 5, (4,), 5)
