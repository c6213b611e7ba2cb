"""Approximation presets: resolving names, the substitution pass, and
substituted plans run securely (against their own plaintext meaning)."""
import math

import pytest
import torch

import mpcc
from mpcc.passes import run_pipeline
from mpcc.passes.approximate import ApproxError, approx_label, resolve_approx
from tests.conftest import token_ids


class _Block(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.gelu(torch.softmax(x, -1) * 4.0 - 2.0)


def test_presets_and_overrides_resolve_to_a_choice_per_family():
    exact = {"softmax": "exact", "gelu": "exact", "layer_norm": "exact"}
    assert resolve_approx("exact") == exact
    assert resolve_approx("mpcformer") == {**exact, "softmax": "2quad", "gelu": "quad"}
    assert resolve_approx("secformer") == {"softmax": "2quad_goldschmidt", "gelu": "secformer",
                                           "layer_norm": "goldschmidt"}
    assert resolve_approx({"preset": "mpcformer", "gelu": "exact"}) == {**exact, "softmax": "2quad"}
    assert resolve_approx({"softmax": "2quad"}) == {**exact, "softmax": "2quad"}
    assert approx_label({"preset": "exact", "softmax": "2quad", "gelu": "quad"}) == "mpcformer"
    assert approx_label({"softmax": "2quad"}) == "gelu=exact,layer_norm=exact,softmax=2quad"
    assert resolve_approx("gelu=exact,softmax=2quad") == {**exact, "softmax": "2quad"}


@pytest.mark.parametrize("approx, message", [
    ("mpcformr", r"no approximation preset 'mpcformr'; presets are \['exact', 'mpcformer'"),
    ({"softmax": "3quad"}, r"no softmax substitute '3quad'; softmax substitutes are \['2quad', '2quad_goldschmidt', 'exact', 'power', 'puma'\]"),
    ({"sigmoid": "exact"}, r"no op family 'sigmoid'; families are \['gelu', 'layer_norm', 'softmax'\]"),
    ({"preset": "nope"}, r"no approximation preset 'nope'"),
    ("preset=" * 3000 + "exact", r"no approximation preset 'preset="),
])
def test_unknown_names_list_the_valid_ones(approx, message):
    with pytest.raises(ApproxError, match=message):
        mpcc.compile(_Block(), (torch.zeros(2, 5),), approx=approx)


def test_the_pass_puts_in_each_substitute_with_its_own_meaning():
    x = torch.linspace(-3, 3, 10, dtype=torch.float64).reshape(2, 5)
    traced = mpcc.trace(_Block(), (x,))
    graph = run_pipeline(traced, ["infer_visibility", "approximate(gelu=quad,softmax=2quad)"])
    assert {"softmax_2quad", "gelu_quad"} <= {n.op for n in graph.nodes}
    quad = (x + 5) ** 2
    secformer = run_pipeline(traced, ["infer_visibility", "approximate(gelu=secformer,softmax=2quad_goldschmidt)"])
    u = (quad / quad.sum(-1, keepdim=True) * 4.0 - 2.0) / math.sqrt(2)   # |u| <= 1.5: the series' range
    k = torch.arange(1, 8, dtype=torch.float64)
    beta = torch.tensor([1.25772, -0.0299154, 0.382155, -0.0519123, 0.196033, -0.0624557, 0.118029],
                        dtype=torch.float64)
    erf = (torch.sin(u.unsqueeze(-1) * k * math.pi / 10) * beta).sum(-1)
    (got,) = mpcc.interpret(secformer, {"x": x}, {})
    assert torch.allclose(got, 0.5 * u * math.sqrt(2) * (1 + erf), atol=1e-12)
    p = quad / quad.sum(-1, keepdim=True) * 4.0 - 2.0
    want = 0.125 * p * p + 0.25 * p + 0.5
    (got,) = mpcc.interpret(graph, {"x": x}, {})
    assert torch.allclose(got, want, atol=1e-12)
    unchanged = run_pipeline(traced, ["infer_visibility", "approximate(gelu=exact,softmax=exact)"])
    assert unchanged.dump() == run_pipeline(traced, ["infer_visibility"]).dump()


@pytest.fixture(scope="module")
def mpcformer_bert(tiny_bert):
    inputs = {"input_ids": token_ids(6, 120)}
    return mpcc.compile(tiny_bert, inputs, approx="mpcformer"), inputs


def test_mpcformer_reaches_attention_and_runs_securely(mpcformer_bert, tiny_bert):
    plan, inputs = mpcformer_bert
    ops = [n for n in plan.graph.nodes if n.op == "mpc.sdpa"]
    assert ops and all(n.attrs["softmax"] == "2quad" for n in ops)
    # the Quad GeLU runs inside the FFN-out linear that reads it (``fuse_activation_linear``)
    absorbed = [n for n in plan.graph.nodes if n.op == "mpc.linear_server" and n.attrs.get("activation")]
    assert absorbed and all(n.attrs["activation"] == "gelu_quad" for n in absorbed)
    assert not {"mpc.gelu", "mpc.gelu_quad"} & {n.op for n in plan.graph.nodes}
    assert plan.approx == "mpcformer" and any(p.startswith("approximate(") for p in plan.pipeline)
    outputs, stats = mpcc.run(plan, inputs, tiny_bert.state_dict(), progress=False)
    planned = mpcc.interpret(plan, inputs, tiny_bert.state_dict())
    exact = mpcc.interpret(mpcc.compile(tiny_bert, inputs), inputs, tiny_bert.state_dict())
    assert (outputs[0] - planned[0]).abs().max() < 1e-2
    assert (planned[0] - exact[0]).abs().max() > 1e-2, "the substitutes change the function"
    cost = plan.cost()
    assert (stats.rounds, stats.online_bytes_total) == (cost.rounds, cost.online_bytes)


def test_a_plan_keeps_its_approximation_through_a_file(mpcformer_bert, tmp_path):
    plan, _ = mpcformer_bert
    loaded = mpcc.load(plan.save(tmp_path / "plan.mpcc"))
    assert loaded.approx == "mpcformer" and loaded.hash == plan.hash
    other = mpcc.compile(_Block(), (torch.zeros(2, 5),), approx={"preset": "mpcformer", "gelu": "exact"})
    assert other.approx == "gelu=exact,layer_norm=exact,softmax=2quad"
