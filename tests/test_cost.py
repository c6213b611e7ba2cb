"""The cost model as a person sees it: network profiles, the wall-time
estimate, the breakdown by layer and op family (which sums to the totals),
`mpcc cost` with its plot, and predictions equal to a measured run."""
from __future__ import annotations

import math
import sys

import pytest

import mpcc
from mpcc.api import APPROXIMATIONS
from mpcc.cli import main
from mpcc.ir import TensorType
from mpcc.runtime.cost import COMPUTE, layer_of, op_cost
from mpcc.runtime.networks import NETWORKS, Network, parse_network

from .conftest import token_ids


@pytest.fixture(scope="module")
def plan(tiny_bert):
    return mpcc.compile(tiny_bert, {"input_ids": token_ids(8, 120)})


# --- profiles

@pytest.mark.parametrize("spec, bandwidth_bps, latency_s", [
    ("lan", 1e9, 0.5e-3),
    ("wan", 100e6, 40e-3),
    ("local", math.inf, 0.0),
    ("1Gbps,0.5ms", 1e9, 0.5e-3),
    ("100Mbps,40ms", 100e6, 40e-3),
    ("1e9,0.0005", 1e9, 0.5e-3),
    (" 250 kbps , 1.5 s ", 250e3, 1.5),
    ("10bps,20us", 10, 20e-6),
])
def test_profiles(spec, bandwidth_bps, latency_s):
    network = parse_network(spec)
    assert network.bandwidth_bps == pytest.approx(bandwidth_bps)
    assert network.latency_s == pytest.approx(latency_s)
    assert parse_network(network) is network


def test_named_profiles_match_their_custom_spelling():
    for name, spec in [("lan", "1Gbps,0.5ms"), ("wan", "100Mbps,40ms")]:
        named, custom = NETWORKS[name], parse_network(spec)
        assert (named.bandwidth_bps, named.latency_s) == pytest.approx((custom.bandwidth_bps, custom.latency_s))
    assert NETWORKS["wan"].describe() == "wan (100 Mbps, 40 ms one-way)"
    assert NETWORKS["lan"].describe() == "lan (1 Gbps, 0.5 ms one-way)"


@pytest.mark.parametrize("spec", ["", "fast", "LAN", "1Gbps", "1Gbps,", "1GBps,1ms",   # GB: bytes, refused
                                  "0Mbps,1ms", "1Gbps,-1ms", "1Gbps,1ms,2", "1Gbps,1h", "1 Gbit,1ms"])
def test_bad_profiles_name_the_valid_forms(spec):
    with pytest.raises(ValueError) as raised:
        parse_network(spec)
    message = str(raised.value)
    assert "\n" not in message and repr(spec.strip()) in message
    assert all(form in message for form in ("lan", "wan", "local", "BANDWIDTH,LATENCY", "1Gbps,0.5ms"))


# --- the estimate

def test_estimate_is_latency_plus_bandwidth_plus_compute():
    shared = TensorType((16, 16), "real", "shared")
    cost = op_cost("mpc.mul", {"self": shared, "other": shared}, {"truncate": True})
    busier = max(p.online_bytes for p in cost.per_party)
    assert cost.rounds == 2 and busier > 0
    compute = COMPUTE.seconds(cost.rounds, cost.online_bytes + cost.offline_bytes)
    assert cost.compute_seconds == pytest.approx(compute) and compute > 0
    assert cost.estimate_seconds("10Mbps,5ms") == pytest.approx(2 * 5e-3 + busier * 8 / 10e6 + compute)
    assert cost.estimate_seconds("wan") == pytest.approx(2 * 40e-3 + busier * 8 / 100e6 + compute)
    assert cost.estimate_seconds("local") == pytest.approx(compute)
    assert cost.latency_seconds("wan") == pytest.approx(0.08)
    assert cost.bandwidth_seconds("wan") == pytest.approx(busier * 8 / 100e6)


def test_the_cost_knows_its_profile(plan):
    lan, wan = plan.cost(), plan.cost(network="wan")
    assert lan.network == NETWORKS["lan"] and wan.network == NETWORKS["wan"]
    assert wan.estimate_seconds() == pytest.approx(lan.estimate_seconds("wan"))
    assert lan.with_network("wan").estimate_seconds() == pytest.approx(wan.estimate_seconds())
    assert plan.cost("1Gbps,0.5ms").estimate_seconds() == pytest.approx(lan.estimate_seconds())
    assert "on wan (100 Mbps, 40 ms one-way)" in wan.summary() and "on wan" in lan.summary("wan")
    with pytest.raises(ValueError, match="BANDWIDTH,LATENCY"):
        plan.cost(network="dialup")


def test_compute_model_tracks_a_local_run(plan, tiny_bert):
    """The compute fit is rough and machine-bound (docs/cost.md): here only
    that it has the right order of magnitude on the machine running the test."""
    mpcc.run(plan, {"input_ids": token_ids(8, 120)}, tiny_bert.state_dict(), progress=False)   # warm up
    _, stats = mpcc.run(plan, {"input_ids": token_ids(8, 120)}, tiny_bert.state_dict(), progress=False)
    predicted = plan.cost("local").estimate_seconds()
    assert predicted / 10 < stats.online_seconds < predicted * 10


# --- breakdowns

@pytest.mark.parametrize("layer, origin", [
    ("encoder.layer.3", "encoder.layer.3.attention.self"), ("encoder.layer.3", "encoder.layer.3"),
    ("transformer.h.0", "transformer.h.0.mlp.c_fc"), ("embeddings", "embeddings.LayerNorm"),
    ("pooler", "pooler"), ("<top>", ""),
])
def test_layer_of(layer, origin):
    assert layer_of(origin) == layer


def _assert_rows_sum_to_totals(cost, rows):
    assert sum(row.rounds for row in rows) == cost.rounds
    assert sum(row.node_rounds for row in rows) == cost.sequential_rounds
    assert sum(row.client_bytes for row in rows) == cost.per_party[0].online_bytes
    assert sum(row.server_bytes for row in rows) == cost.per_party[1].online_bytes
    assert sum(row.online_bytes for row in rows) == cost.online_bytes
    assert sum(row.offline_bytes for row in rows) == cost.offline_bytes
    assert sum(row.setup_bytes for row in rows) == cost.setup_bytes


@pytest.mark.parametrize("overflow_check", [False, True])
def test_breakdowns_sum_to_the_totals(tiny_bert, plan, overflow_check):
    if overflow_check:
        plan = mpcc.compile(tiny_bert, {"input_ids": token_ids(8, 120)}, overflow_check=True)
    cost = plan.cost()
    layers = cost.by_layer()
    assert list(layers) == ["embeddings", "encoder.layer.0", "encoder.layer.1", "pooler", "<top>"] + \
        (["<overflow check>"] if overflow_check else [])
    assert layers["encoder.layer.0"].rounds == layers["encoder.layer.1"].rounds > 0   # twin layers
    for rows in (layers, cost.by_family(), cost.breakdown("layer", "family")):
        _assert_rows_sum_to_totals(cost, rows.values())
    assert cost.rounds < cost.sequential_rounds   # the scheduler merged something
    with pytest.raises(ValueError, match="use family, layer"):
        cost.breakdown("module")


def test_critical_path_is_a_chain_of_the_schedule(plan):
    cost = plan.cost()
    for node, steps in cost.critical_path.items():
        start, finish = cost.schedule[node]
        assert finish - start == steps > 0
    spans = sorted(cost.schedule[node] for node in cost.critical_path)
    assert spans[0][0] == 0 and spans[-1][1] == cost.rounds
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))   # back to back: no step counted twice


# --- predicted equals measured

@pytest.mark.parametrize("approx", sorted(APPROXIMATIONS))
def test_predicted_rounds_and_bytes_equal_a_measured_run(tiny_bert, approx):
    inputs = {"input_ids": token_ids(8, 120)}
    plan = mpcc.compile(tiny_bert, inputs, approx=approx)
    cost = plan.cost("wan")
    _, stats = mpcc.run(plan, inputs, tiny_bert.state_dict(), progress=False)
    assert stats.rounds == cost.rounds
    assert stats.online_bytes == (cost.per_party[0].online_bytes, cost.per_party[1].online_bytes)
    assert stats.online_bytes_total == cost.online_bytes
    assert stats.offline_bytes == cost.offline_bytes
    assert stats.setup_bytes == cost.setup_bytes


# --- the command

def test_cli_prints_the_tables_and_draws_the_plot(plan, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    plan_file, png = plan.save(tmp_path / "tiny.mpcc"), tmp_path / "cost.png"
    assert main(["cost", str(plan_file), "--network", "100Mbps,40ms", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    cost = plan.cost("100Mbps,40ms")
    for phrase in ("cost on 100Mbps,40ms (100 Mbps, 40 ms one-way)", f"rounds     {cost.rounds} scheduled",
                   f"(node by node: {cost.sequential_rounds})", "client -> server", "server -> client",
                   "by layer", "by op family", "encoder.layer.1", "linear_server",
                   f"wall       {cost.estimate_seconds():.3f} s estimated"):
        assert phrase in out, phrase
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_cli_bad_network_is_one_line(plan, tmp_path, capsys):
    plan_file = plan.save(tmp_path / "tiny.mpcc")
    assert main(["cost", str(plan_file), "--network", "fast"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("mpcc cost: error: unknown network 'fast': use lan")


def test_cli_plot_without_matplotlib_says_how_to_install(plan, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib raises ImportError
    plan_file = plan.save(tmp_path / "tiny.mpcc")
    assert main(["cost", str(plan_file), "--plot", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "pip install 'mpcc[plot]'" in err[0] and err[0].startswith("mpcc cost: error: --plot")
    assert not (tmp_path / "x.png").exists()


def test_plot_api_without_matplotlib(plan, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'mpcc\[plot\]'"):
        plan.cost().plot(tmp_path / "x.png")


def test_local_profile_has_no_network_cost(plan):
    cost = plan.cost("local")
    assert cost.latency_seconds() == 0 and cost.bandwidth_seconds() == 0
    assert cost.estimate_seconds() == pytest.approx(cost.compute_seconds)
    assert isinstance(cost.network, Network)
    assert cost.estimate_seconds("wan") - cost.estimate_seconds() == \
        pytest.approx(cost.rounds * 0.04 + max(p.online_bytes for p in cost.per_party) * 8 / 1e8)
