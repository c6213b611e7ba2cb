"""The attacks and faults of the adversarial review, each as a test: reused
dealer labels, plans that exfiltrate weights, material of another plan or
deployment, a failed run, concurrent runs, error text crossing to the peer,
one party reaching the other's material, Ctrl-C."""
from __future__ import annotations

import gc
import os
import signal
import threading
import time

import pytest
import torch

import mpcc
from mpcc.plan import _digest
from mpcc.runtime import DealerError, DealtMaterial, RunError, Session
from mpcc.runtime.dealer import MaterialStream, PartyFeed

from .conftest import token_ids


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()


@pytest.fixture(scope="module")
def bert(tiny_bert):
    inputs = {"input_ids": token_ids(6, 120)}
    return mpcc.compile(tiny_bert, inputs), tiny_bert.state_dict(), inputs


def _tampered(plan, tmp_path):
    """The review's attack: a plan file edited to share a weight and reveal it to the
    client, with its checksum recomputed."""
    path = plan.save(tmp_path / "plan.mpcc")
    header, meta, body = path.read_text().split("\n", 2)
    body = body.replace("return %linear_revealed",
                        "%w_shared = mpc.share(%p_0_weight) : real[3,4] shared\n"
                        "%w_revealed = mpc.reveal(%w_shared, to='client') : real[3,4] client\n"
                        "return %linear_revealed, %w_revealed")
    import json
    settings = {k: v for k, v in json.loads(meta).items() if k != "sha256"}
    path.write_text(f"{header}\n{json.dumps({**settings, 'sha256': _digest(settings, body)})}\n{body}")
    return mpcc.load(path)


# ----------------------------------------------------------------------- fresh randomness
def test_a_label_is_never_dealt_twice(bert):
    plan, weights, inputs = bert
    session = Session(plan, weights, progress=False)
    dealt = session.dealer.deal("inference-2")
    session.run(inputs, material=dealt)
    session.run(inputs)     # streamed runs draw random labels: never "inference-2" again
    session.run(inputs)
    with pytest.raises(DealerError, match="already dealt in this deployment"):
        session.dealer.deal("inference-2")
    with pytest.raises(DealerError, match="letters, digits"):
        session.dealer.deal("a/b")   # '/' would let two labels spell the same PRG label
    labels = {session.dealer.deal().inference for _ in range(3)}
    assert len(labels) == 3 and all(len(label) == 32 for label in labels)   # 128 random bits each


def test_concurrent_claims_of_one_label_admit_exactly_one(bert):
    plan, weights, _ = bert
    dealer = Session(plan, weights, progress=False).dealer
    wins, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            wins.append(dealer.claim("race"))
        except DealerError:
            pass
    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins == ["race"]


def test_material_of_another_deployment_plan_or_setting_is_refused(bert, tmp_path):
    plan, weights, inputs = bert
    session, other = Session(plan, weights, progress=False), Session(plan, weights, progress=False)
    with pytest.raises(RunError, match="another deployment"):
        session.run(inputs, material=other.dealer.deal())
    coarse = mpcc.Plan(plan.graph, plan.approx, plan.pipeline, 20, plan.info)   # same graph, other frac_bits
    with pytest.raises(RunError, match="is for plan"):
        Session(coarse, weights, progress=False).run(inputs, material=session.dealer.deal())
    dealt = session.dealer.deal()
    for party in (0, 1):
        dealt.save(party, tmp_path / f"{party}.safetensors")
    with pytest.raises(Exception, match="expected plan"):
        DealtMaterial.load(tmp_path / "0.safetensors", tmp_path / "1.safetensors", coarse.hash)
    loaded = DealtMaterial.load(tmp_path / "0.safetensors", tmp_path / "1.safetensors", plan.hash)
    with pytest.raises(RunError, match="another deployment"):
        other.run(inputs, material=loaded)
    session.run(inputs, material=loaded)
    with pytest.raises(RunError, match="already used"):
        session.run(inputs, material=loaded)


# ----------------------------------------------------------------------- plans the server accepts
def test_a_plan_that_reveals_a_weight_is_refused(linear, tmp_path):
    plan = mpcc.compile(linear, (torch.zeros(1, 4),))
    tampered = _tampered(plan, tmp_path)
    with pytest.raises(RunError, match="refuses this plan.*w_revealed.*depends on no client input"):
        Session(tampered, linear.state_dict())
    with pytest.raises(RunError, match="refuses this plan"):
        mpcc.run(tampered, (torch.ones(1, 4),), linear.state_dict())


def test_pinned_plans_only(linear, tmp_path):
    plan = mpcc.compile(linear, (torch.zeros(1, 4),))
    Session(plan, linear.state_dict(), pinned={plan.hash})
    edited = mpcc.Plan(plan.graph, plan.approx, plan.pipeline, 18, plan.info)
    with pytest.raises(RunError, match="not one of the 1 plan\\(s\\) this server pinned"):
        Session(edited, linear.state_dict(), pinned={plan.hash})


@pytest.mark.parametrize("edit, message", [
    (lambda body: body.replace("to='client') : real[1,3] client", "to='server') : real[1,3] server"), "outputs go to the client"),
    (lambda body: body.replace("return %linear_revealed", "%extra = mpc.reveal(%linear, to='client') : real[1,3] client\n"
                                                          "return %linear_revealed"), "not a declared output"),
    (lambda body: body.replace("%linear_revealed = mpc.reveal(%linear", "%linear_revealed = mpc.reveal(%nowhere"),
     "IR rule"),
])
def test_reveal_policy_and_lint(linear, edit, message):
    from mpcc.ir import parse
    plan = mpcc.compile(linear, (torch.zeros(1, 4),))
    try:
        graph = parse(edit(plan.dump()))
    except Exception:   # the parser itself refused: also a refusal before any secret moves
        return
    with pytest.raises(RunError, match=message):
        Session(mpcc.Plan(graph, plan.approx, plan.pipeline, plan.frac_bits, plan.info), linear.state_dict())


# ----------------------------------------------------------------------- faults
def test_a_failed_first_run_leaves_the_session_usable(bert, monkeypatch):
    """The server sends D = W - B in the first run; the client fails after it. The
    next run must send D again (the client never kept it) instead of hanging."""
    plan, weights, inputs = bert
    session = Session(plan, weights, progress=False, timeout=10)
    import mpcc.runtime.executor as executor
    original, calls = executor._run, {"n": 0}

    def failing_late(node, graph, env, ctx, *rest):
        if ctx.party == 0 and not ctx.meta and node.op == "mpc.linear_server":   # the server sends D, then waits
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("client out of memory")
        return original(node, graph, env, ctx, *rest)
    monkeypatch.setattr(executor, "_run", failing_late)
    with pytest.raises(RunError, match="client out of memory"):
        session.run(inputs)
    start = time.perf_counter()
    outputs, stats = session.run(inputs)
    assert time.perf_counter() - start < 8 and stats.setup_bytes > 0   # D sent again
    reference = mpcc.interpret(plan.graph, inputs, weights)
    assert (outputs[0] - reference[0]).abs().max() < 1e-2
    assert session.run(inputs)[1].setup_bytes == 0   # and committed once it arrived


def test_concurrent_first_runs_are_serialised(bert):
    plan, weights, inputs = bert
    session = Session(plan, weights, progress=False, timeout=20)
    results, errors = [], []

    def run():
        try:
            results.append(session.run(inputs)[0][0])
        except Exception as error:   # noqa: BLE001 - collected for the assertion
            errors.append(error)
    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(results) == 3
    assert all((r - results[0]).abs().max() < 1e-2 for r in results)


def test_error_text_stays_with_the_failing_party(bert, monkeypatch):
    plan, weights, inputs = bert
    session = Session(plan, weights, progress=False, timeout=10)
    import mpcc.runtime.executor as executor
    original = executor._run

    def server_fails(node, graph, env, ctx, *rest):
        if ctx.party == 1 and not ctx.meta and node.op == "mpc.gelu":
            raise RuntimeError("weight magnitude 1234.5678")
        return original(node, graph, env, ctx, *rest)
    monkeypatch.setattr(executor, "_run", server_fails)
    with pytest.raises(RunError) as caught:
        session.run(inputs)
    client_error, server_error = caught.value.party_errors
    assert "1234.5678" in str(server_error) and "server failed" in str(caught.value)
    assert client_error is not None and "1234.5678" not in str(client_error)
    assert "the peer stopped: it failed" in str(client_error)


def test_each_party_reaches_only_its_own_material(bert):
    plan, weights, _ = bert
    session = Session(plan, weights, progress=False)
    stream = MaterialStream("isolation-test", timeout=10)
    stream.start(session.dealer).join()
    assert stream.feeds[1].items, "the plan has stored material for the server"

    def reachable(root):
        seen, todo = set(), [root]
        while todo:
            item = todo.pop()
            if id(item) in seen or not isinstance(item, (dict, list, tuple, PartyFeed)) and \
                    type(item).__name__ != "_Progress":
                continue
            seen.add(id(item))
            todo.extend(gc.get_referents(item.__dict__ if hasattr(item, "__dict__") else item))
        return seen
    from_client = reachable(stream.feeds[0])
    assert id(stream.feeds[1].items) not in from_client and id(stream.feeds[1]) not in from_client
    assert all(id(t) not in from_client for items in stream.feeds[1].items.values() for t in items)


def test_ctrl_c_stops_the_party_threads_promptly(bert, monkeypatch):
    plan, weights, inputs = bert
    session = Session(plan, weights, progress=False, timeout=60)
    import mpcc.runtime.executor as executor
    original = executor._run

    def slow(node, graph, env, ctx, *rest):
        if ctx.party == 1 and not ctx.meta and node.op.startswith("mpc."):
            time.sleep(0.2)
        return original(node, graph, env, ctx, *rest)
    monkeypatch.setattr(executor, "_run", slow)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))   # what Ctrl-C sends
    timer.start()
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        session.run(inputs)
    assert time.perf_counter() - start < 5
    time.sleep(0.5)
    assert not any(t.name.startswith("mpcc-party") and t.is_alive() for t in threading.enumerate())


# ----------------------------------------------------------------------- ranges
def test_out_of_range_weights_and_inputs_are_refused_before_the_run(bert, linear):
    plan, weights, inputs = bert
    bad = dict(weights)
    name = next(k for k in bad if k.endswith("intermediate.dense.weight"))
    for value, message in ((float("nan"), "NaN"), (1e12, "limit")):
        bad[name] = weights[name].clone().fill_(value)
        with pytest.raises(RunError, match=f"{name}.*{message}"):
            Session(plan, bad, progress=False)
    lin_plan = mpcc.compile(linear, (torch.zeros(1, 4),))
    assert lin_plan.info["input_ranges"]["input"][1] < 2 ** 15
    session = Session(lin_plan, {k: v.numpy() for k, v in linear.state_dict().items()}, progress=False)  # numpy
    with pytest.raises(RunError, match="input"):
        session.run((torch.full((1, 4), 1e5),))
    with pytest.raises(RunError, match="whole numbers"):
        Session(plan, weights, progress=False).run({"input_ids": inputs["input_ids"] + 0.5})


def test_a_large_intermediate_weight_is_reported_by_check_ranges(bert):
    plan, weights, inputs = bert
    assert mpcc.check_ranges(plan, inputs, weights).ok
    scaled = dict(weights)
    name = next(k for k in scaled if k.endswith("0.intermediate.dense.weight"))
    scaled[name] = weights[name] * 1e5
    report = mpcc.check_ranges(plan, inputs, scaled)
    assert not report.ok and "comparison domain" in str(report) and "gelu" in str(report)
    assert "domains" in plan.info and any("gelu" in node for node in plan.info["domains"])


# ----------------------------------------------------------------------- the secure overflow check
@pytest.fixture(scope="module")
def checked(tiny_bert):
    inputs = {"input_ids": token_ids(6, 120)}
    return mpcc.compile(tiny_bert, inputs, overflow_check=True), tiny_bert.state_dict(), inputs


def _scaled(weights, scale):
    scaled = dict(weights)
    name = next(k for k in scaled if k.endswith("0.intermediate.dense.weight"))
    scaled[name] = weights[name] * scale
    return scaled


def test_overflow_check_keeps_results_and_its_cost_is_counted(checked, bert):
    plan, weights, inputs = checked
    assert plan.overflow_check and plan.hash != bert[0].hash
    outputs, stats = Session(plan, weights, progress=False).run(inputs)
    assert (outputs[0] - mpcc.interpret(plan.graph, inputs, weights)[0]).abs().max() < 1e-2
    cost = plan.cost()
    assert (stats.rounds, stats.online_bytes_total, stats.offline_bytes) == \
        (cost.rounds, cost.online_bytes, cost.offline_bytes)
    assert "overflow_check" in stats.by_family and cost.rounds > bert[0].cost().rounds


def test_overflow_check_has_no_false_alarm_under_a_causal_mask(tiny_gpt2):
    ids = token_ids(12, 120)
    plan = mpcc.compile(tiny_gpt2, (ids,), overflow_check=True)
    outputs, _ = mpcc.run(plan, (ids,), tiny_gpt2.state_dict(), progress=False)
    assert (outputs[0] - mpcc.interpret(plan.graph, {"input_ids": ids}, tiny_gpt2.state_dict())[0]).abs().max() < 0.05


@pytest.mark.parametrize("scale", [1e5, 1e6])
def test_values_out_of_range_end_in_an_error_naming_the_node(checked, bert, scale):
    """The review's cases: an intermediate weight x1e5 (GeLU inputs ~3.5e4) and x1e6."""
    plan, weights, inputs = checked
    scaled = _scaled(weights, scale)
    with pytest.raises(RunError, match="values left the domain of %gelu .*encoder.layer.0.intermediate"):
        Session(plan, scaled, progress=False).run(inputs)
    unchecked, _, _ = bert    # without the check, the same weights give a silently wrong answer
    outputs, _ = Session(unchecked, scaled, progress=False).run(inputs)
    assert (outputs[0] - mpcc.interpret(unchecked.graph, inputs, scaled)[0]).abs().max() > 1.0


def test_the_overflow_test_fails_without_the_checks(tiny_bert, monkeypatch):
    from mpcc.runtime.context import Context
    monkeypatch.setattr(Context, "check_range", lambda self, x, bound_log2: None)   # planted: no flags raised
    inputs = {"input_ids": token_ids(6, 120)}
    plan = mpcc.compile(tiny_bert, inputs, overflow_check=True)   # its own plan: the dealer's tape follows the plant
    Session(plan, _scaled(tiny_bert.state_dict(), 1e5), progress=False).run(inputs)   # no error: the test above fails


# ----------------------------------------------------------------------- found by the adversarial review
class _TimesServer(torch.nn.Module):
    def forward(self, x, s):
        return x * s


def test_a_server_input_is_never_masked_once_per_deployment():
    """D = s - B sent once would be stale for the next s, and a resend would give the client s1 - s2."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    plan = mpcc.compile(_TimesServer(), {"x": x, "s": torch.ones(1, 4)}, owners={"s": "server"})
    assert "mpc.mul_server" not in {n.op for n in plan.graph.nodes}
    session = Session(plan, {}, progress=False)
    for s in (torch.full((1, 4), 10.0), torch.tensor([[1.0, 2.0, 3.0, 4.0]])):
        assert (session.run({"x": x, "s": s})[0][0] - x * s).abs().max() < 1e-3
    from mpcc.ir import Graph, parse   # the edited plan: mul_server with the server input as its "weight"
    product = next(n for n in plan.graph.nodes if n.op == "mpc.mul")
    x_shared, s_shared = product.operands
    graph = parse(plan.dump().replace(f"= mpc.mul(%{x_shared}, %{s_shared}, truncate=True)",
                                      f"= mpc.mul_server(%{x_shared}, %s)"))
    graph = Graph(tuple(n for n in graph.nodes if n.name != s_shared), graph.outputs)
    with pytest.raises(RunError, match="reuse a deployment mask.*changes per inference"):
        Session(mpcc.Plan(graph, plan.approx, plan.pipeline, plan.frac_bits, plan.info), {})


def test_reveals_of_public_and_server_values_and_side_computations_are_refused(linear):
    from mpcc.ir import parse
    plan = mpcc.compile(linear, (torch.zeros(1, 4),), owners={"input": "public"})   # output: public x and weights
    with pytest.raises(RunError, match="depends on no client input"):
        Session(plan, linear.state_dict())
    plan = mpcc.compile(linear, (torch.zeros(1, 4),))
    side = plan.dump().replace("return %linear_revealed",
                               "%probe = mpc.relu(%linear) : real[1,3] shared\nreturn %linear_revealed")
    with pytest.raises(RunError, match="probe.*reaches no declared output"):
        Session(mpcc.Plan(parse(side), plan.approx, plan.pipeline, plan.frac_bits, plan.info), linear.state_dict())


def test_layer_norm_below_rsqrt_domain_is_an_error_under_the_check():
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(64, eps=1e-12).eval()
    plan = mpcc.compile(norm, (torch.zeros(2, 64),), overflow_check=True)
    for spread in (1e-3, 3e-3, 5e-3):   # variances 1e-6 .. 2.5e-5, about 0 to 2 ulps: errors up to ~3 before
        x = 5.0 + spread * torch.randn(2, 64)
        session = Session(plan, norm.state_dict(), progress=False)
        for _ in range(3):   # the variance's rounding is random: every run must fail
            with pytest.raises(RunError, match="values left the domain of %layer_norm"):
                session.run((x,))
    fine = 0.1 * torch.randn(2, 64)    # variance 1e-2 (below ~1e-3 the fixed-point variance costs > 1%: docs)
    out, _ = mpcc.run(plan, (fine,), norm.state_dict(), progress=False)
    expected = norm(fine).detach().double()
    assert (out[0] - expected).abs().max() < 1e-2 * expected.abs().max()   # within 1% of the output's scale


def test_a_product_that_wraps_the_ring_is_an_error_under_the_check():
    """w = 1e5 and x = 2e4 pass the Session's checks, but x w 2^32 wraps Z_2^64 about half the time."""
    layer = torch.nn.Linear(1, 1, bias=False)
    layer.weight.data.fill_(1e5)
    x = torch.full((1, 1), 2e4)
    plan = mpcc.compile(layer, (x,), overflow_check=True)
    session = Session(plan, layer.state_dict(), progress=False)
    for _ in range(6):
        with pytest.raises(RunError, match="values left the domain"):
            session.run((x,))


def test_edited_material_is_refused(bert):
    plan, weights, inputs = bert
    session, other = Session(plan, weights, progress=False), Session(plan, weights, progress=False)
    used = session.dealer.deal()
    session.run(inputs, material=used)
    used.inference = session.dealer.deal().inference      # relabelled as a fresh, unused dealing
    with pytest.raises(RunError, match="not dealt under this label"):
        session.run(inputs, material=used)
    foreign = other.dealer.deal()
    foreign.deployment = session.dealer.deployment        # another deployment's, its id edited
    with pytest.raises(RunError, match="not dealt under this label"):
        session.run(inputs, material=foreign)
    stream = MaterialStream("not-material", timeout=1)
    with pytest.raises(RunError, match="must be DealtMaterial"):
        session.run(inputs, material=stream)


def test_reserved_labels_and_names_that_could_collide(linear):
    from mpcc.ir import Graph, Node
    from mpcc.verify import LintError, lint
    plan = mpcc.compile(linear, (torch.zeros(1, 4),))
    dealer = Session(plan, linear.state_dict(), progress=False).dealer
    for label in ("deploy", "tag"):
        with pytest.raises(DealerError, match="not deploy, tag"):
            dealer.deal(label)
    node = plan.graph.nodes[0]
    renamed = Graph((Node("mul/3", node.op, node.operands, node.attrs, node.type),) + plan.graph.nodes[1:],
                    plan.graph.outputs)
    with pytest.raises(LintError, match="letters, digits and '_'"):
        lint(renamed)
