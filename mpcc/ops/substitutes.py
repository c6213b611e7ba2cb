"""Substitutes for GeLU that the approximation presets put in place of the
exact function: each an op at the ``nn`` level (its reference is its own
plaintext formula, so ``mpcc.interpret`` runs the substituted model) and its
``mpc.`` op with the protocol. Softmax substitutes live in ``attention.py``
(``SOFTMAX_VARIANTS``), which attention shares."""
from __future__ import annotations

import torch

from .arith import add_public, square, trunc
from .base import define
from .nonlinear import _public

__all__ = ["gelu_quad", "QUAD_GELU"]

QUAD_GELU = (0.125, 0.25, 0.5)   # MPCFormer's Quad: 0.125 x^2 + 0.25 x + 0.5


def _gelu_quad_reference(x):
    a, b, c = QUAD_GELU
    return a * x * x + b * x + c


async def gelu_quad(ctx, x):
    """0.125 x^2 + 0.25 x + 0.5 = (x^2 + 2x) / 8 + 1/2: one square kept at 2f
    fractional bits, 2x added at the same scale, one truncation by f + 3.
    Rounds 2; bytes 16 per element, both. Domain: x^2 < 2^(62-2f) (|x| < 32768 at f = 16)."""
    f = ctx.frac_bits
    z = await square(ctx, x, truncate=False)
    return add_public(ctx, await trunc(ctx, z + x * (2 << f), f + 3), _public(ctx, 0.5, x))


define("gelu_quad", ("self",), _gelu_quad_reference, "MPCFormer's Quad GeLU 0.125x^2 + 0.25x + 0.5 (a substitute)",
       "nn")
define("mpc.gelu_quad", ("self",), _gelu_quad_reference, "MPCFormer's Quad GeLU (one square, one truncation)", "mpc",
       protocol=gelu_quad)
