"""Scaled Newton schedules: minimax steps y <- y (a - b z) for w^(-1/q), z = w y^q.

For z in a known interval [lo, hi], the step whose map z -> z (a - b z)^q
takes equal values at lo and hi (minimax: the zero r = a/b is lo + hi for
q = 1, lo + sqrt(lo hi) + hi for q = 2) narrows the interval's ratio by about
4 (q = 1) or 6.75 (q = 2) per step when it is wide, and converges
quadratically near 1, where it is Newton's step (cf. scaled Newton for the
polar decomposition, Byers and Xu 2008, and its minimax form, Amsel et al.
2025, "The Polar Express"). ``scaled_newton`` rounds each step's
coefficients to a grid and tracks the interval they leave, so the errors a
protocol states are those of the coefficients it uses. Plain floats: the
protocols (``power.py``) turn the steps into products of wires.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["NewtonStep", "scaled_newton", "image", "grid"]


@dataclass(frozen=True)
class NewtonStep:
    """y <- y (a - b z) for z = w y^q in [low, high] before the step."""
    a: float
    b: float
    low: float
    high: float


def image(a: float, b: float, q: int, low: float, high: float) -> tuple[float, float]:
    """(min, max) of h(z) = z (a - b z)^q on [low, high] (ends and the critical point a / ((q + 1) b))."""
    points = [low, high]
    critical = a / ((q + 1) * b)
    if low < critical < high:
        points.append(critical)
    values = [z * (a - b * z) ** q for z in points]
    return min(values), max(values)


def scaled_newton(q: int, low: float, steps: int, bits: list[tuple[int, int]]) -> tuple[tuple[NewtonStep, ...],
                                                                                      tuple[float, float]]:
    """The minimax steps for w^(-1/q) from z = w y^q in [low, 1], each (a, b) rounded to its
    ``bits`` = (bits of a, bits of b) (the last pair repeats), b = 0 bits: an integer. Returns
    the steps and the interval [low, high] of z after them: y w^(1/q) = z^(1/q) lies in
    [low^(1/q), high^(1/q)]."""
    out, high = [], 1.0
    for index in range(steps):
        a_bits, b_bits = bits[min(index, len(bits) - 1)]
        zero = low + high if q == 1 else low + math.sqrt(low * high) + high
        top = image(zero, 1.0, q, low, high)[1]
        b = max(1, round(top ** (-1.0 / q) * 2 ** b_bits)) / 2 ** b_bits   # the image's top about 1
        a = math.ceil(b * zero * 2 ** a_bits) / 2 ** a_bits                  # the zero never moves left
        new_low, new_high = image(a, b, q, low, high)
        if not (a / b > high and new_low > 0):
            raise AssertionError(f"scaled Newton step {index} leaves the interval: {a}, {b} on [{low}, {high}]")
        out.append(NewtonStep(a, b, low, high))
        low, high = new_low, new_high
    return tuple(out), (low, high)


def grid(value: float, bits: int) -> int:
    scaled = value * 2 ** bits
    if scaled != round(scaled):
        raise AssertionError(f"{value} is not on the 2^-{bits} grid")
    return int(round(scaled))
