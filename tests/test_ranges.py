"""Fixed-point domains: the table against the protocols, the plaintext check on
models, and the input and weight checks that refuse what would overflow."""
from __future__ import annotations

import json
import math
from dataclasses import asdict

import numpy as np
import pytest
import torch

import mpcc
from mpcc.interpreter import InterpretError, check_inputs, check_weights, normalize_weights, weight_limit
from mpcc.ir import Node, TensorType
from mpcc.ops import REGISTRY, get_op
from mpcc.ranges import (DOMAIN_RULES, MissingDomainRule, check_ranges, comparison_bound, default_input_ranges,
                         domains_of)
from mpcc.runtime.harness import run_protocol

from .conftest import token_ids

F = 16
ULP = 2.0 ** -F
INTERMEDIATE = "encoder.layer.0.intermediate.dense.weight"


def test_every_mpc_op_has_a_domain_rule():
    mpc_ops = {name for name in REGISTRY if name.startswith("mpc.")}
    assert mpc_ops == set(DOMAIN_RULES), "DOMAIN_RULES and the registry's mpc ops differ"


def test_a_missing_rule_is_an_error_naming_the_op(monkeypatch):
    plan = mpcc.compile(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()), (torch.zeros(1, 4),))
    monkeypatch.delitem(DOMAIN_RULES, "mpc.gelu")
    with pytest.raises(MissingDomainRule, match="mpc.gelu"):
        domains_of(plan)


# ----------------------------------------------------------------------------- the table against the protocols
def domain(op, attrs=None, shape=(4,), which=0):
    node = Node("n", op, ("a",), dict(attrs or {}), TensorType(shape, "real", "shared"))
    return DOMAIN_RULES[op](node, {"self": TensorType(shape, "real", "shared")}, F)[which].domain


def secure(op, x, **attrs):
    run = run_protocol(lambda ctx, *shares: get_op(op).protocol(ctx, *shares, **attrs), x)
    return run.decoded, get_op(op).reference(x, **attrs).to(torch.float64)


def row(*values):
    return torch.tensor([values], dtype=torch.float64)


def _cases():
    """(op, attrs, inside values, outside values, tolerance): inside the stated
    domain the protocol matches its reference; just outside it does not (where
    the domain is tight)."""
    relu, exp, gelu = domain("mpc.relu"), domain("mpc.exp"), domain("mpc.gelu")
    tanh, recip, rsqrt = domain("mpc.tanh"), domain("mpc.reciprocal"), domain("mpc.rsqrt")
    spread = domain("mpc.softmax", {"dim": -1}).high
    column = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return [
        ("mpc.relu", {}, column(relu.high - ULP, relu.low, 1.0), column(relu.high, relu.low - 1), 1e-9),
        ("mpc.exp", {}, column(exp.low, -3.0, 0.0, exp.high - 1e-3), column(exp.high, exp.high + 0.5), 2e-5 * math.e),
        ("mpc.gelu", {"approximate": "none"}, column(gelu.high - ULP, gelu.low, 3.9, -4.1),
         column(gelu.high + 1, gelu.low - 1), 1e-3),
        ("mpc.tanh", {}, column(tanh.high - ULP, tanh.low, 0.3), column(tanh.high + 1000, tanh.low - 1000), 3e-3),
        ("mpc.reciprocal", {}, column(recip.low, 3.0, recip.high - ULP), None, 1e-4),
        ("mpc.rsqrt", {}, column(rsqrt.low, 1.0, rsqrt.high - 1), column(rsqrt.high * 4), 1e-3),
        ("mpc.softmax", {"dim": -1}, row(spread / 2 - ULP, -spread / 2, 1.0), row(spread / 2, -spread / 2, 1.0), 1e-3),
        ("mpc.amax", {"dim": -1, "keepdim": False}, row(spread / 2 - ULP, -spread / 2, 1.0),
         row(spread / 2, -spread / 2, 1.0), 1e-9),
    ]


CASES = _cases()


@pytest.mark.parametrize("op, attrs, inside, outside, tolerance", CASES, ids=[case[0] for case in CASES])
def test_protocols_are_right_inside_their_domain_and_wrong_outside(op, attrs, inside, outside, tolerance):
    got, want = secure(op, inside, **attrs)
    relative = op == "mpc.rsqrt"
    # rsqrt's error is relative, plus its output's last truncation (1.5 ulp: at the domain's top 1/sqrt(x)
    # is only 32 ulps)
    error = ((got - want).abs() - (1.5 * 2.0 ** -16 if relative else 0)).clamp(min=0)
    error = (error / (want.abs() if relative else 1)).max()
    assert error <= tolerance, f"{op} inside its domain: {got.tolist()} vs {want.tolist()}"
    if outside is not None:
        got, want = secure(op, outside, **attrs)
        wrong = ((got - want).abs() / (want.abs() if relative else 1)) > 100 * tolerance
        wrong = wrong.any(-1) if outside.dim() > 1 else wrong   # a row op: some entry of each row
        assert bool(wrong.all()), f"{op} outside its stated domain is still right: the domain is not tight"


def test_products_must_fit_the_truncation():
    """Inside, the truncation is faithful; past 2^62 ring units it errs with
    probability (|z| - 2^62) / 2^63 per element: near 3 * 2^62 nearly always."""
    bound = math.sqrt(domain("mpc.mul", {"truncate": True}).high)
    inside = torch.cat([torch.linspace(0.9, 1, 31, dtype=torch.float64) * (bound - 1), torch.tensor([-(bound - 1)])])
    run = run_protocol(lambda ctx, a, b: get_op("mpc.mul").protocol(ctx, a, b, True), inside, inside)
    assert (run.decoded - inside ** 2).abs().max() <= 2 * bound * ULP   # the inputs' rounding to 2^-16
    outside = torch.linspace(1.65, 1.7, 64, dtype=torch.float64) * bound
    run = run_protocol(lambda ctx, a, b: get_op("mpc.mul").protocol(ctx, a, b, True), outside, outside)
    assert ((run.decoded - outside ** 2).abs() > 1e6).sum() > 32


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def bert_plan(tiny_bert):
    ids = token_ids(8, 120)
    return mpcc.compile(tiny_bert, {"input_ids": ids}), {"input_ids": ids}


def scaled(model, key, factor):
    weights = dict(model.state_dict())
    weights[key] = weights[key] * factor
    return weights


def test_tiny_bert_with_its_weights_is_in_range(bert_plan, tiny_bert):
    plan, inputs = bert_plan
    report = check_ranges(plan, inputs, tiny_bert.state_dict())
    assert report.ok and not report.problems and report.checked > 100
    assert str(report).startswith("ok:")


def test_a_large_intermediate_weight_is_reported_at_the_gelu(bert_plan, tiny_bert):
    """The issue's model: the intermediate weight x1e5 puts GeLU inputs beyond 2^15;
    x1e6 also puts the next LayerNorm's variance beyond LayerNorm's variance domain (rsqrt's, floored at 4 ulps)."""
    plan, inputs = bert_plan
    report = check_ranges(plan, inputs, scaled(tiny_bert, INTERMEDIATE, 1e5))
    assert [(p.node, p.domain.what) for p in report.problems] == [("gelu", "input")]
    (line,) = str(report).splitlines()
    assert line.startswith("%gelu (encoder.layer.0.intermediate.intermediate_act_fn): input max |x| ")
    assert "exceeds the comparison domain 3.28e4 by 1.07x" in line

    report = check_ranges(plan, inputs, scaled(tiny_bert, INTERMEDIATE, 1e6))
    assert [(p.node, p.domain.what) for p in report.problems] == [("gelu", "input"), ("layer_norm_2", "variance + eps")]
    lines = str(report).splitlines()
    assert "by 10.7x" in lines[0]
    assert lines[1].startswith("%layer_norm_2 (encoder.layer.0.output.LayerNorm): variance + eps max ")
    assert "is above LayerNorm's variance domain (n (var + eps) is truncated and bracketed) [6.1e-5, 3.36e7)" in lines[1]


def test_tiny_gpt2_with_its_weights_is_in_range(tiny_gpt2):
    """Causal attention and tanh-GeLU: no false alarm; scaled up, the attention scores are caught."""
    ids = token_ids(8, 120)
    plan = mpcc.compile(tiny_gpt2, {"input_ids": ids})
    assert check_ranges(plan, {"input_ids": ids}, tiny_gpt2.state_dict()).ok
    weights = scaled(tiny_gpt2, "transformer.h.0.attn.c_attn.weight", 1e3)
    found = {(p.node, p.domain.what) for p in check_ranges(plan, {"input_ids": ids}, weights).problems}
    assert any(what.startswith("score spread") for _, what in found), found


def test_intermediate_values_and_bounds_are_reported():
    """Softmax score spread, LayerNorm variance (both ends), an input beyond the
    comparison domain, a weight at the limit, NaN: one line each, never an exception."""
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)
            self.norm = torch.nn.LayerNorm(4)

        def forward(self, x):
            return torch.softmax(self.proj(x), -1), self.norm(x)
    model = Model().eval()
    plan = mpcc.compile(model, (torch.zeros(2, 4),))
    weights = model.state_dict()
    fine = torch.tensor([[0.5, -1.0, 2.0, 0.1], [1.0, 2.0, 3.0, 4.0]])
    assert check_ranges(plan, {"x": fine}, weights).ok

    wide = torch.tensor([[3e4, -3e4, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0 + 1e-3]])
    report = check_ranges(plan, {"x": wide}, {**weights, "proj.weight": torch.eye(4)})
    found = {(p.node, p.domain.what) for p in report.problems}
    assert ("softmax", "spread (max - min) along axis -1") in found
    assert ("layer_norm", "variance + eps") in found
    variance = next(p for p in report.problems if p.domain.what == "variance + eps")
    assert variance.seen_low < variance.domain.low and variance.seen_high >= variance.domain.high
    assert "beyond both ends of LayerNorm's variance domain" in str(variance)

    huge = dict(weights, **{"proj.bias": torch.full((4,), weight_limit(F))})
    report = check_ranges(plan, {"x": torch.full((2, 4), 4e4)}, huge)
    lines = str(report).splitlines()
    assert any(line.startswith("%x (<top>): input max |x| 4e4 exceeds its input range 3.28e4") for line in lines)
    assert any(line.startswith("%p_proj_bias (proj): weight max |x| 5.37e8 exceeds the weight limit") for line in lines)

    report = check_ranges(plan, {"x": torch.full((2, 4), float("nan"))}, weights)
    assert "%x (<top>): input contains NaN or inf" in str(report).splitlines()


def test_domains_are_stored_as_json(bert_plan):
    plan, _ = bert_plan
    table = domains_of(plan)
    assert {"gelu", "layer_norm_2", "scaled_dot_product_attention"} <= set(table)
    text = json.dumps({name: [asdict(d) for d in ds] for name, ds in table.items()}, allow_nan=False)
    assert json.loads(text)["gelu"] == [{"low": -32763.5, "high": 32763.5, "what": "input",
                                         "limit": "the comparison domain"}]
    with pytest.raises(TypeError, match="frac_bits"):
        domains_of(plan.graph)
    assert domains_of(plan.graph, 12)["gelu"][0].high == 2.0 ** 19 - 4.5


# ----------------------------------------------------------------------------- inputs and weights
def test_default_input_ranges_cover_real_inputs_only(bert_plan):
    plan, _ = bert_plan
    assert default_input_ranges(plan.graph, F) == {}   # token ids: checked against the vocabulary
    graph = mpcc.trace(torch.nn.Linear(3, 2), (torch.zeros(1, 3),))
    assert default_input_ranges(graph, F) == {"input": (-comparison_bound(F), comparison_bound(F) - ULP)}


def test_inputs_outside_their_range_are_refused():
    graph = mpcc.trace(torch.nn.Linear(3, 2), (torch.zeros(1, 3),))
    ranges = default_input_ranges(graph, F)
    check_inputs(graph, {"input": torch.tensor([[-32768.0, 0.0, 32767.0]])}, ranges)
    with pytest.raises(InterpretError, match=r"input 'input' has values in \[-1, 40000\], outside its range "
                                             r"\[-32768, 32768\]"):
        check_inputs(graph, {"input": torch.tensor([[-1.0, 0.0, 4e4]])}, ranges)
    with pytest.raises(InterpretError, match="input 'input' contains NaN or inf"):
        check_inputs(graph, {"input": torch.tensor([[0.0, float("inf"), 0.0]])}, ranges)
    with pytest.raises(InterpretError, match="ranges name inputs the graph does not have"):
        check_inputs(graph, {"input": torch.zeros(1, 3)}, {"other": (0, 1)})
    check_inputs(graph, {"input": torch.tensor([[0.0, float("nan"), 0.0]])})   # no ranges: the interpreter's NaN


@pytest.mark.parametrize("bad", [3.5, float("nan"), float("inf")])
def test_token_ids_must_be_whole_numbers(bert_plan, bad):
    plan, inputs = bert_plan
    ids = inputs["input_ids"].to(torch.float64)
    check_inputs(plan.graph, {"input_ids": ids})   # whole floats are fine
    ids[0, 3] = bad
    with pytest.raises(InterpretError, match=r"^input 'input_ids': token ids must be whole numbers \(got "):
        check_inputs(plan.graph, {"input_ids": ids})


def test_weights_are_checked_for_nan_inf_and_magnitude(tiny_bert, bert_plan):
    plan, _ = bert_plan
    weights = tiny_bert.state_dict()
    check_weights(plan.graph, weights, F)
    limit = weight_limit(F)
    assert limit == 2.0 ** 29
    bad = dict(weights)
    bad[INTERMEDIATE] = weights[INTERMEDIATE].clone()
    bad[INTERMEDIATE][0, 0] = -limit
    bad["pooler.dense.bias"] = torch.full((32,), float("nan"))
    bad["embeddings.LayerNorm.bias"] = torch.full((32,), float("-inf"))
    with pytest.raises(InterpretError) as error:
        check_weights(plan.graph, bad, F)
    message = str(error.value)
    assert message.startswith("3 problem(s) with the weights: ")
    assert "weight 'embeddings.LayerNorm.bias' contains inf" in message
    assert "weight 'pooler.dense.bias' contains NaN" in message
    assert (f"weight '{INTERMEDIATE}' has max |value| 5.369e+08, at or above the limit 5.369e+08 = 2^29 "
            "for 16 fractional bits") in message
    check_weights(plan.graph, bad)   # without frac_bits: shapes only (the plaintext interpreter)
    check_weights(plan.graph, dict(bad, **{INTERMEDIATE: weights[INTERMEDIATE] * 1e6,
                                           "pooler.dense.bias": weights["pooler.dense.bias"],
                                           "embeddings.LayerNorm.bias": weights["embeddings.LayerNorm.bias"]}), F)


def test_numpy_weights_are_accepted(tiny_bert, bert_plan):
    plan, inputs = bert_plan
    arrays = {k: v.numpy() for k, v in tiny_bert.state_dict().items()}
    frozen = arrays["pooler.dense.bias"].copy()
    frozen.flags.writeable = False
    arrays["pooler.dense.bias"] = frozen
    tensors = normalize_weights(arrays)
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert tensors["pooler.dense.weight"].dtype == torch.float32
    assert np.shares_memory(tensors["pooler.dense.weight"].numpy(), arrays["pooler.dense.weight"])
    check_weights(plan.graph, arrays, F)
    expected = mpcc.interpret(plan.graph, inputs, tiny_bert.state_dict())
    for got, want in zip(mpcc.interpret(plan.graph, inputs, arrays), expected):
        assert torch.equal(got, want)
    assert check_ranges(plan, inputs, arrays).ok
    with pytest.raises(InterpretError, match="weight 'w' is a str, which is not a tensor"):
        normalize_weights({"w": "zeros"})
