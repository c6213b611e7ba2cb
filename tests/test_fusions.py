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


# --------------------------------------------------------------------------- fusions of the optimising compiler
class _Attention(torch.nn.Module):
    """Eager attention on the client's values: q k^T * scale, softmax, times v."""
    def __init__(self, scale, read_probabilities_twice=False):
        super().__init__()
        self.scale, self.twice = scale, read_probabilities_twice
        self.key, self.value = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

    def forward(self, q):
        p = torch.softmax(q @ self.key(q).transpose(-1, -2) * self.scale, -1)
        out = p @ self.value(q)
        return out + p.sum(-1, keepdim=True) if self.twice else out


class _Ffn(torch.nn.Module):
    def __init__(self, gelu_read_twice=False):
        super().__init__()
        self.up, self.down, self.twice = torch.nn.Linear(16, 32), torch.nn.Linear(32, 16), gelu_read_twice

    def forward(self, x):
        h = torch.nn.functional.gelu(self.up(x))
        return self.down(h) + (h.sum(-1, keepdim=True) if self.twice else 0)


def _compiled_and_run(model, x, approx="exact"):
    plan = mpcc.compile(model, (x,), approx=approx)
    (got,), stats = mpcc.run(plan, (x,), model.state_dict(), progress=False)
    (name,) = [n.name for n in plan.graph.nodes if n.op == "input"]
    (planned,) = mpcc.interpret(plan, {name: x}, model.state_dict())
    assert (got - planned).abs().max() < 1e-2
    assert stats.rounds == plan.cost().rounds
    return plan, planned


def test_eager_attention_becomes_sdpa_with_the_same_meaning():
    q = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))
    for scale, approx in [(0.25, "exact"), (0.3, "exact"), (0.25, "mpcformer")]:
        torch.manual_seed(0)
        model = _Attention(scale)
        plan, planned = _compiled_and_run(model, q, approx)
        sdpa = [n for n in plan.graph.nodes if n.op == "mpc.sdpa"]
        assert len(sdpa) == 1 and sdpa[0].attrs["scale"] == scale
        assert not {"mpc.softmax", "mpc.softmax_2quad", "mpc.mul_scalar"} & {n.op for n in plan.graph.nodes}
        if approx == "exact":
            with torch.no_grad():
                assert (planned - model.double()(q.double())).abs().max() < 1e-9


def test_attention_whose_probabilities_are_read_twice_stays_eager():
    q = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plan = mpcc.compile(_Attention(0.25, read_probabilities_twice=True), (q,))
    assert "mpc.sdpa" not in {n.op for n in plan.graph.nodes} and "mpc.softmax" in {n.op for n in plan.graph.nodes}


def test_quad_gelu_joins_the_linear_after_it():
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(0)
    model = _Ffn()
    plan, planned = _compiled_and_run(model, x, "mpcformer")
    down = [n for n in plan.graph.nodes if n.attrs.get("activation")]
    assert [n.attrs["activation"] for n in down] == ["gelu_quad"] and "mpc.gelu_quad" not in {n.op for n in plan.graph.nodes}
    with torch.no_grad():
        h = model.up.double()(x.double())
        assert (planned - model.down.double()(0.125 * h * h + 0.25 * h + 0.5)).abs().max() < 1e-9
    unfused = mpcc.compile(model, (x,), approx={"preset": "mpcformer"})   # the same plan, spelled as a dict
    assert unfused.cost().rounds == plan.cost().rounds
    twice = mpcc.compile(_Ffn(gelu_read_twice=True), (x,), approx="mpcformer")
    assert "mpc.gelu_quad" in {n.op for n in twice.graph.nodes}
    assert not any(n.attrs.get("activation") for n in twice.graph.nodes)


def test_a_client_input_read_by_several_linears_is_masked_once():
    q = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = _Attention(0.25)
    plan, _ = _compiled_and_run(model, q)
    (share,) = [n for n in plan.graph.nodes if n.op == "mpc.share"]
    assert share.attrs.get("masked") is True
    cost = plan.cost()
    assert cost.by_node[0][share.name].online_bytes == 8 * q.numel()   # the client's one message
    # a reader that takes plain shares (a comparison): no mask
    relu = mpcc.compile(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(16, 4)), (q,))
    assert not any(n.attrs.get("masked") for n in relu.graph.nodes if n.op == "mpc.share")
