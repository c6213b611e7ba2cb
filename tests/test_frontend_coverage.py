"""The ATen forms Hugging Face families bring: in-place ops, casts, two-operand min/max,
public math, convolutions; and one error that names every unsupported op."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

import mpcc
from mpcc.ir import IRError
from mpcc.ops.tensor import patches
from mpcc.passes import LoweringError

from .conftest import secure_error


class InPlace(torch.nn.Module):
    """Hugging Face's in-place habits: ``masked_fill_`` on a fresh tensor, ``add_``, ``detach_``."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        bias = torch.zeros(4)
        bias.masked_fill_(torch.arange(4) > 1, 0.5)
        bias.detach_()
        h = self.proj(x)
        h.add_(bias)
        return h * 2


def test_in_place_ops_are_made_functional():
    x = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    graph = mpcc.trace(InPlace(), (x,))
    assert not any(node.op.endswith("_") for node in graph.nodes)
    assert secure_error(InPlace().eval(), (x,))[1] < 1e-3


class MixedForms(torch.nn.Module):
    """``type_as``, ``min``/``max`` of two tensors, public cos/sin (a rotary table), ``sign``/``ceil``."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x, ids):
        positions = torch.arange(x.shape[1]).type_as(x)[:, None]
        table = torch.cos(positions * 0.5) + torch.sin(positions).sign() * torch.ceil(positions / 2)
        capped = torch.min(ids, torch.full_like(ids, 3)).type_as(x)   # the client's own ints
        return self.proj(x) * table + torch.max(capped, torch.ones_like(capped))[..., None]


def test_casts_min_max_and_public_math():
    torch.manual_seed(0)
    module = MixedForms().eval()
    inputs = {"x": torch.randn(1, 5, 4), "ids": torch.tensor([[0, 5, 2, 7, 1]])}
    plan, error = secure_error(module, inputs)
    assert not {"cos", "sin", "sign", "ceil"} & {node.op for node in plan.graph.nodes}   # folded at compile time
    assert error < 1e-3


def test_public_math_on_a_secret_is_refused_by_name():
    class SecretCos(torch.nn.Module):   # the client's x times the server's weights: a secret
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(3, 3)

        def forward(self, x):
            return torch.cos(self.proj(x))
    with pytest.raises(LoweringError, match="no MPC protocol for 'cos'"):
        mpcc.compile(SecretCos(), (torch.zeros(1, 3),))


class Unsupported(torch.nn.Module):
    def forward(self, x):
        a = torch.sort(x).values
        b = torch.cumprod(x, -1)
        return torch.sort(a + b).values + torch.erfinv(x.clamp(-0.5, 0.5))


def test_every_unsupported_op_is_reported_at_once():
    with pytest.raises(mpcc.UnsupportedOpError) as info:
        mpcc.trace(Unsupported(), (torch.randn(2, 4),))
    message = str(info.value)
    assert "3 unsupported op(s)" in message
    assert "aten.sort.default x2" in message          # counted, the second one behind an unsupported op
    assert "aten.cumprod.default x1" in message and "aten.erfinv.default x1" in message


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(0, 2), st.integers(1, 2),
       st.integers(4, 9), st.integers(0, 10**6))
def test_patches_are_unfold_for_any_dtype(kernel, stride, channels, padding, dilation, size, seed):
    """The im2col reference works on int64 shares and equals torch's unfold on floats."""
    if (kernel - 1) * dilation + 1 > size + 2 * padding:
        return
    x = torch.randn(2, channels, size, size + 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    args = ([kernel, kernel], [stride, stride], [padding, padding], [dilation, dilation])
    want = torch.nn.functional.unfold(x, kernel, dilation, padding, stride).transpose(1, 2)
    assert torch.equal(patches(x, *args), want)
    ints = (x * 1000).round().to(torch.int64)
    assert torch.equal(patches(ints, *args), patches(ints.double(), *args).to(torch.int64))


@pytest.mark.parametrize("stride, padding, dilation", [(4, 0, 1), (1, 1, 1), (2, 1, 2)])
def test_a_secret_image_through_the_servers_convolution(stride, padding, dilation):
    """ViT's patch embedding (stride = kernel: a pure reshaping) and general convolutions."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 4, stride=stride, padding=padding, dilation=dilation).eval()
    image = torch.randn(1, 3, 12, 12)
    plan, error = secure_error(conv, (image,))
    ops = {node.op for node in plan.graph.nodes}
    assert "mpc.linear_server" in ops and "patches" in ops and "conv2d" not in ops
    assert error < 1e-3


def test_grouped_convolution_is_refused_by_name():
    conv = torch.nn.Conv2d(4, 4, 2, groups=2)
    with pytest.raises(IRError, match="grouped convolution"):
        mpcc.compile(conv, (torch.zeros(1, 4, 6, 6),))
