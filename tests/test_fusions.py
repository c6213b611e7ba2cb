"""Fusions after lowering keep the meaning and save rounds."""
import torch

import mpcc
from mpcc.passes.fuse_scaled_matmul import power_of_two_shift


class _Scores(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale
        self.key = torch.nn.Linear(16, 16)

    def forward(self, q):
        k = self.key(q)   # shared: the server's weights times the client's values
        return torch.softmax(q @ k.transpose(-1, -2) * self.scale, -1)


def test_power_of_two_shift():
    assert [power_of_two_shift(v) for v in (0.5, 0.125, 2.0 ** -20)] == [1, 3, 20]
    assert [power_of_two_shift(v) for v in (1.0, 2.0, 0.3, -0.5, 0, "x", 2.0 ** -31, 2.0 ** -60)] == [None] * 8


def test_a_power_of_two_scale_joins_the_matmul_and_saves_a_round():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 8, 16, generator=g)
    torch.manual_seed(0)
    model = _Scores(0.25)
    fused = mpcc.compile(model, (q,))
    ops = [n.op for n in fused.graph.nodes]
    assert "mpc.mul_scalar" not in ops and any(n.attrs.get("shift") == 2 for n in fused.graph.nodes
                                                 if n.op == "mpc.matmul")
    plain = mpcc.compile(_Scores(0.3), (q,))   # not a power of two: the scaling stays
    assert "mpc.mul_scalar" in [n.op for n in plain.graph.nodes]
    assert fused.cost().rounds == plain.cost().rounds - 1
    (got,), _ = mpcc.run(fused, (q,), model.state_dict(), progress=False)
    with torch.no_grad():
        assert (got - model.double()(q.double())).abs().max() < 1e-3


class _ScoresAndProduct(_Scores):
    def forward(self, q):
        product = q @ self.key(q).transpose(-1, -2)
        return torch.softmax(product * self.scale, -1), product


def test_a_product_read_elsewhere_keeps_its_own_scaling():
    q = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = _ScoresAndProduct(0.25)
    plan = mpcc.compile(model, (q,))
    assert "mpc.mul_scalar" in [n.op for n in plan.graph.nodes], "the unscaled product is an output too"
    (probs, product), _ = mpcc.run(plan, (q,), model.state_dict(), progress=False)
    with torch.no_grad():
        want = model.double()(q.double())
    assert (probs - want[0]).abs().max() < 1e-3 and (product - want[1]).abs().max() < 1e-2
