"""The ``power`` preset: each comparison-free substitute against its own plaintext
formula (one-op plans run by both parties, cost as a contract), the scaled Newton
schedules, a substituted BERT run securely, the absence of any comparison, and the
multiplicative depth."""
from __future__ import annotations

import gc
import math
import sys
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, Phase

import mpcc
from mpcc.bench import bert_layer
from mpcc.depth import DEPTH_RULES, MissingDepthRule, NotComparisonFree, depths, multiplicative_depth
from mpcc.ir import Graph, Node, TensorType
from mpcc.ops import borrow_tree, compare
from mpcc.ops import power, scaled_newton
from mpcc.passes.approximate import approx_label, resolve_approx
from tests.conftest import token_ids
from tests.test_op_registry import ULP, Arg, Case, _layer_norm_check, check_case, weight_arg
from tests.test_op_registry import check_op as registry_check_op

CASE_SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck))
PLANTED_SEARCH = dict(max_examples=10, derandomize=True, database=None, phases=[Phase.generate], **CASE_SETTINGS)


# ----------------------------------------------------------------------------- one-op cases
# (their builders live in tests/test_op_registry.py with every other op's: its test runs them)
def check_op(op_name: str, **options):
    registry_check_op(op_name, **options)


def test_the_quartic_absorbed_by_a_linear():
    """act(x) W^T + b with the quartic's untruncated share (2f bits): one truncation for both."""
    x = torch.round(torch.linspace(-9, 9, 24, dtype=torch.float64).reshape(4, 6) * 2 ** 16) / 2 ** 16
    w = torch.round(torch.linspace(-1, 1, 18, dtype=torch.float64).reshape(3, 6) * 2 ** 16) / 2 ** 16
    q = power.GELU_QUARTIC["alpha"] * x * x
    bound = ((power.GELU_QUARTIC["beta"] + 2 * q + 3) * ULP) @ w.abs().T + 4 * ULP
    check_case("mpc.linear_server", Case({"input": Arg(x), "weight": weight_arg(w)},
                                         {"bias": None, "transpose": True, "activation": "gelu_quartic"}, atol=bound))


def test_layer_norm_at_the_ends_of_its_domain():
    """Variances just inside [2^-11, 2^8), one row each, against torch's LayerNorm."""
    rows = []
    for variance in (2.0 ** -11 * 1.02, 1.0, 2.0 ** 8 * 0.98):
        row = torch.tensor([1.0, -1.0] * 4, dtype=torch.float64) * math.sqrt(variance)
        rows.append(torch.round(row * 2 ** 16) / 2 ** 16)
    x = torch.stack(rows)
    check_case("mpc.layer_norm_newton", Case({"input": Arg(x)}, {"normalized_shape": [8], "eps": 1e-12,
                                                                  "weight": None, "bias": None},
                                             check=_layer_norm_check))


def test_softmax_at_the_top_of_its_domain():
    """One dominant entry: the row's sum near 2^11.7, the reciprocal's low end."""
    x = torch.tensor([[51.0, 0.0, 0.0, 0.0, -1.0, 0.0]], dtype=torch.float64)
    assert 2 ** 11 < float(power.power_row_sums(x)[1]) < 2 ** 12
    check_case("mpc.softmax_power", Case({"self": Arg(x)}, {"dim": -1}, atol=1e-4))


# ----------------------------------------------------------------------------- the schedules
@pytest.mark.parametrize("q, steps, low, bound", [
    (1, power.RECIPROCAL_STEPS, 2.0 ** (-power.POWER_SUM_LOG2 - 1), 6.3e-5),
    (2, power.RSQRT_STEPS, 2.0 ** (power.LN_NEWTON_LOG2[0] - power.LN_NEWTON_LOG2[1]), 1.3e-6)])
def test_scaled_newton_steps_reach_their_stated_error(q, steps, low, bound):
    """The rounded coefficients, run in float64 over the whole domain (log-spaced), leave
    y w^(1/q) where the schedule says; each step's interval is the last one's image."""
    z0 = torch.logspace(math.log10(low), 0, 20001, dtype=torch.float64)
    z, y = z0.clone(), torch.ones_like(z0)
    for step in steps:
        assert float(z.min()) >= step.low * (1 - 1e-12) and float(z.max()) <= step.high * (1 + 1e-12)
        g = step.a - step.b * z
        z, y = z * g ** q, y * g
    scale = power.LN_SCALE if q == 2 else 1.0
    error = (y * z0 ** (1 / q) * scale - 1).abs().max()
    assert float(error) <= bound


def test_scaled_steps_narrow_the_interval_faster_than_newton():
    """From 2^-19 a plain Newton step for 1/sqrt (z -> z (3 - z)^2 / 4) multiplies the low end
    by 2.25; the minimax step by about 6.75."""
    first = power.RSQRT_STEPS[1]
    low, high = scaled_newton.image(first.a, first.b, 2, first.low, first.high)
    assert low / high > 6 * first.low / first.high


# ----------------------------------------------------------------------------- planted defects
def test_a_dropped_coupled_step_fails_the_softmax_test(monkeypatch):
    steps = power.RECIPROCAL_STEPS
    monkeypatch.setattr(power, "RECIPROCAL_STEPS", steps[:3] + steps[4:])
    with pytest.raises(AssertionError, match="differs"):
        check_op("mpc.softmax_power", **PLANTED_SEARCH)


def test_a_wrong_newton_coefficient_fails_the_layer_norm_test(monkeypatch):
    steps = list(power.RSQRT_STEPS)
    steps[-2] = scaled_newton.NewtonStep(steps[-2].a, steps[-2].b + 2.0 ** -power.COEF_BITS, steps[-2].low, steps[-2].high)
    monkeypatch.setattr(power, "RSQRT_STEPS", tuple(steps))
    with pytest.raises(AssertionError, match="differs"):
        check_op("mpc.layer_norm_newton", **PLANTED_SEARCH)


# ----------------------------------------------------------------------------- the preset
def test_the_preset_and_its_overrides_resolve():
    assert resolve_approx("power") == {"softmax": "power", "gelu": "quartic", "layer_norm": "newton"}
    assert resolve_approx({"preset": "power", "gelu": "exact"}) == {"softmax": "power", "gelu": "exact",
                                                                     "layer_norm": "newton"}
    assert approx_label({"preset": "power", "gelu": "exact"}) == "gelu=exact,layer_norm=newton,softmax=power"


@pytest.fixture(scope="module")
def power_bert(tiny_bert):
    inputs = {"input_ids": token_ids(6, 120)}
    return mpcc.compile(tiny_bert, inputs, approx="power"), inputs


def test_a_substituted_bert_runs_securely_as_its_plan_says(power_bert, tiny_bert):
    plan, inputs = power_bert
    ops = Counter(n.op for n in plan.graph.nodes)
    assert "mpc.layer_norm_newton" in ops and not {"mpc.layer_norm", "mpc.gelu"} & set(ops)
    absorbed = [n for n in plan.graph.nodes if n.attrs.get("activation") == "gelu_quartic"]
    assert len(absorbed) == 2 and "mpc.gelu_quartic" not in ops, "each FFN's out linear absorbs its quartic"
    assert all(n.attrs["softmax"] == "power" for n in plan.graph.nodes if n.op == "mpc.sdpa")
    outputs, stats = mpcc.run(plan, inputs, tiny_bert.state_dict(), progress=False)
    planned = mpcc.interpret(plan, inputs, tiny_bert.state_dict())
    exact = mpcc.interpret(mpcc.compile(tiny_bert, inputs), inputs, tiny_bert.state_dict())
    assert (outputs[0] - planned[0]).abs().max() < 1e-2
    assert (planned[0] - exact[0]).abs().max() > 1e-2, "power-softmax and the quartic change the function"
    cost = plan.cost()
    assert (stats.rounds, stats.online_bytes_total) == (cost.rounds, cost.online_bytes)
    kept = mpcc.compile(tiny_bert, inputs, approx={"preset": "power", "gelu": "exact"})
    assert "mpc.gelu" in {n.op for n in kept.graph.nodes} and "mpc.gelu_quartic" not in {n.op for n in kept.graph.nodes}


# ----------------------------------------------------------------------------- no comparison, and the depth
COMPARISON_CODE = {compare.__file__, borrow_tree.__file__}


def comparison_calls(plan) -> Counter:
    """Calls into the comparison modules (LTZ, B2A, the borrow tree) while the cost model runs
    ``plan``'s protocols (both parties' code, on shapes, in this thread)."""
    calls: Counter = Counter()

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename in COMPARISON_CODE:
            calls[frame.f_code.co_name] += 1
    # a suspended protocol coroutine left by an earlier test (an aborted run) that the garbage
    # collector closes during the probe re-enters its frame, a "call" of comparison code that this
    # plan never made: collect first, and not during the probe (seen once in CI: 2 such calls)
    gc.collect()
    gc.disable()
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        plan.cost()
    finally:
        sys.setprofile(previous)
        gc.enable()
    return calls


@pytest.fixture(scope="module")
def layer():
    hidden = torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(0))
    return bert_layer(hidden=32, heads=4, ffn=64), {"hidden_states": hidden}


def test_a_power_bert_layer_runs_no_comparison(layer):
    model, inputs = layer
    plan = mpcc.compile(model, inputs, approx="power")
    assert comparison_calls(plan) == Counter()
    for other in ("exact", "mpcformer"):   # the probe sees comparisons where there are some
        assert comparison_calls(mpcc.compile(model, inputs, approx=other))


def test_the_depth_of_a_power_bert_layer_adds_up(layer):
    model, inputs = layer
    plan = mpcc.compile(model, inputs, approx="power")
    attention = 1 + (power.softmax_depth() + 2) + 1          # q linear, sdpa, output dense
    feed_forward = 1 + power.GELU_DEPTH + 1
    assert multiplicative_depth(plan) == attention + power.LAYER_NORM_DEPTH + feed_forward + power.LAYER_NORM_DEPTH
    cost = plan.cost()
    found = depths(plan)
    for node in plan.graph.nodes:   # a level of products takes a round at least
        if node.op in ("mpc.sdpa", "mpc.layer_norm_newton", "mpc.gelu_quartic"):
            inner = max(found[node.name] - max(found[name] for name in node.operands), 1)
            assert inner <= cost.by_node[0][node.name].rounds
    with pytest.raises(NotComparisonFree, match="sdpa"):
        multiplicative_depth(mpcc.compile(model, inputs, approx="mpcformer"))


def _node(name, op, operands, shape=(2, 3), vis="shared", **attrs):
    return Node(name, op, tuple(operands), attrs, TensorType(shape, "real", vis))


def test_depth_of_a_small_graph(monkeypatch):
    """x -> x^2 -> x^3 -> quartic -> linear, plus x: 2 + 2 + 1 = 5 levels; a residual add keeps the max."""
    nodes = [_node("x", "input", (), vis="client", owner="client"), _node("w", "param", (), (3, 3), "server", key="w"),
             _node("xs", "mpc.share", ("x",)), _node("sq", "mpc.square", ("xs",)),
             _node("cube", "mpc.mul", ("sq", "xs")), _node("g", "mpc.gelu_quartic", ("cube",)),
             _node("l", "mpc.linear_server", ("g", "w"), bias=None, transpose=True),
             _node("sum", "mpc.add", ("l", "xs")), _node("out", "mpc.reveal", ("sum",), vis="client", to="client")]
    graph = Graph(tuple(nodes), ("out",))
    assert multiplicative_depth(graph) == 5
    assert depths(graph)["cube"] == 2 and depths(graph)["g"] == 4
    relu = Graph(tuple(nodes[:3]) + (_node("r", "mpc.relu", ("xs",)),), ("r",))
    with pytest.raises(NotComparisonFree, match="%r = mpc.relu"):
        multiplicative_depth(relu)
    monkeypatch.delitem(DEPTH_RULES, "mpc.square")
    with pytest.raises(MissingDepthRule, match="mpc.square"):
        multiplicative_depth(graph)
