"""Two-party runs of whole plans: agreement with float64 torch, counts equal
to the cost model, dealer files, failure paths, and what each party sees."""
from __future__ import annotations

import math
import threading
import time

import pytest
import torch

import mpcc
from mpcc.frontend import reference_outputs
from mpcc.ops import arith, nonlinear as nl
from mpcc.runtime import DealtMaterial, MaterialFileError, RunError, Session
from mpcc.runtime.context import PeerAborted, ProtocolError
from mpcc.runtime.harness import run_protocol
from mpcc.runtime.transport import InProcessChannel, Piece

from .conftest import token_ids




@pytest.fixture(scope="module")
def bert_session(tiny_bert, transport):   # a session per transport: its first run sends the setup
    inputs = {"input_ids": token_ids(6, 120)}
    plan = mpcc.compile(tiny_bert, inputs)
    return plan, Session(plan, tiny_bert.state_dict(), progress=False), inputs


def test_tiny_bert_exact_matches_torch_and_cost(bert_session, tiny_bert):
    plan, session, inputs = bert_session
    outputs, stats = session.run(inputs)
    for got, want in zip(outputs, reference_outputs(tiny_bert, inputs)):
        assert (got - want).abs().max() < 1e-2
    cost = plan.cost()
    assert stats.rounds == cost.rounds
    assert stats.online_bytes == (cost.per_party[0].online_bytes, cost.per_party[1].online_bytes)
    assert stats.offline_bytes == cost.offline_bytes
    assert stats.setup_bytes == cost.setup_bytes
    again, second = session.run(inputs)
    assert second.setup_bytes == 0, "masked weights are sent once per deployment"
    assert second.online_bytes == stats.online_bytes


def test_tiny_gpt2_greedy_next_token(tiny_gpt2):
    inputs = {"input_ids": token_ids(7, 120, seed=3)}
    plan = mpcc.compile(tiny_gpt2, inputs)
    assert "gelu" in {n.op.removeprefix("mpc.") for n in plan.graph.nodes}, "GPT-2's GeLU is fused"
    (logits,), _ = mpcc.run(plan, inputs, tiny_gpt2.state_dict(), progress=False)
    (expected,) = reference_outputs(tiny_gpt2, inputs)
    assert (logits - expected).abs().max() < 1e-2
    assert int(logits[0, -1].argmax()) == int(expected[0, -1].argmax())


def test_minilm_sentence_embeddings(minilm):
    words = ["cats", "dogs", "privacy", "secure computation", "transformers", "weather", "music", "football",
             "cooking", "travel", "books", "science", "history", "art", "math", "physics", "chemistry",
             "biology", "movies", "coffee"]
    batch = minilm.tokenizer([f"a sentence about {w}" for w in words], return_tensors="pt", padding=True)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    plan = mpcc.compile(minilm.model, inputs, owners={"attention_mask": "public"})
    (hidden, _), _ = mpcc.run(plan, inputs, minilm.model.state_dict(), progress=False)
    expected = reference_outputs(minilm.model, inputs)[0]
    mask = batch["attention_mask"].unsqueeze(-1).double()
    pooled = lambda h: (h * mask).sum(1) / mask.sum(1)  # noqa: E731
    cosine = torch.nn.functional.cosine_similarity(pooled(hidden), pooled(expected))
    assert len(cosine) == 20 and cosine.min() >= 0.999


def test_errors_before_any_secret_is_shared(bert_session, tiny_bert):
    plan, session, inputs = bert_session
    with pytest.raises(RunError, match="shape"):
        session.run({"input_ids": token_ids(7, 120)})
    with pytest.raises(RunError, match=r"token ids must lie in \[0, 120\)"):
        session.run({"input_ids": torch.tensor([[1, 2, 3, 4, 5, 120]])})
    with pytest.raises(RunError, match="missing"):
        session.run({})
    weights = dict(tiny_bert.state_dict())
    weights.pop("encoder.layer.0.output.dense.weight")
    with pytest.raises(RunError, match="missing weight 'encoder.layer.0.output.dense.weight'"):
        Session(plan, weights)
    with pytest.raises(RunError, match="does not use"):
        Session(plan, {**tiny_bert.state_dict(), "stowaway": torch.zeros(2)})


def test_dealer_material_files(tmp_path, bert_session):
    plan, session, inputs = bert_session
    dealt = session.dealer.deal("ahead-1")
    for party, name in ((0, "client.safetensors"), (1, "server.safetensors")):
        dealt.save(party, tmp_path / name)
    loaded = DealtMaterial.load(tmp_path / "client.safetensors", tmp_path / "server.safetensors", plan.hash)
    outputs, _ = session.run(inputs, material=loaded)
    reference, _ = session.run(inputs)
    assert (outputs[0] - reference[0]).abs().max() < 1e-2
    with pytest.raises(RunError, match="already used"):
        session.run(inputs, material=loaded)
    with pytest.raises(MaterialFileError, match="expected plan"):
        DealtMaterial.load(tmp_path / "client.safetensors", tmp_path / "server.safetensors", "0" * 64)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(MaterialFileError, match="not a readable"):
        DealtMaterial.load(tmp_path / "bad.safetensors", tmp_path / "server.safetensors", plan.hash)


def test_plan_file_round_trip_then_run(tmp_path, bert_session, tiny_bert):
    plan, session, inputs = bert_session
    loaded = mpcc.load(plan.save(tmp_path / "p.mpcc"))
    assert loaded.hash == plan.hash
    outputs, _ = mpcc.run(loaded, inputs, tiny_bert.state_dict(), progress=False)
    assert (outputs[0] - reference_outputs(tiny_bert, inputs)[0]).abs().max() < 1e-2


def test_peer_failures_are_errors_not_hangs():
    channel = InProcessChannel(timeout=0.5)
    client, server = channel.endpoints
    three = [Piece(torch.zeros(3, dtype=torch.int64))]
    with pytest.raises(ProtocolError, match="no message from the peer within"):
        client.step(three, three)
    server.abort()
    with pytest.raises(PeerAborted, match="the peer stopped: it failed"):
        client.step([], three)
    server.outbox.put([torch.zeros(4, dtype=torch.int64)])   # a message of the wrong shape
    with pytest.raises(ProtocolError, match=r"peer sent \[\(4,\)\], expected \[\(3,\)\]"):
        client.step(three, three)

    def failing(ctx, a):
        if ctx.party == 1 and not ctx.meta:
            raise RuntimeError("server bug")
        return arith.mul(ctx, a, a)
    with pytest.raises(Exception, match="server bug|peer stopped"):
        run_protocol(failing, torch.ones(3), timeout=5)


def _bit_frequencies(messages):
    """Fraction of ones at each meaningful bit position, over all received elements."""
    counts, totals = torch.zeros(64), torch.zeros(64)
    for tensor, width in messages:
        width = width or 64
        words = tensor.reshape(-1, 1).cpu()
        bits = (words >> torch.arange(width)) & 1
        counts[:width] += bits.sum(0).double().float()
        totals[:width] += words.shape[0]
    return counts, totals


def _indistinguishable(a, b):
    (ca, ta), (cb, tb) = _bit_frequencies(a), _bit_frequencies(b)
    used = (ta > 0) & (tb > 0)
    pa, pb = ca[used] / ta[used], cb[used] / tb[used]
    sigma = (0.25 / ta[used] + 0.25 / tb[used]).sqrt()
    uniform = ((pa - 0.5).abs() < 6 * (0.25 / ta[used]).sqrt()).all()
    return bool(((pa - pb).abs() < 6 * sigma).all()) and bool(uniform)


async def _layer(ctx, a):
    w = torch.linspace(-1, 1, 64).reshape(8, 8)
    w_ring = torch.round(w * 2**16).to(torch.int64)
    weight = None if ctx.party == 0 else (torch.empty(8, 8, dtype=torch.int64, device="meta") if ctx.meta
                                          else w_ring.to(ctx.device))
    h = await arith.trunc(ctx, await arith.linear_server(ctx, a, weight, (8, 8), "w", ctx.backend.matmul))
    h = await nl.gelu(ctx, h)
    return await nl.softmax_masked(ctx, h, None)


@pytest.mark.parametrize("party", [0, 1])
def test_views_do_not_depend_on_the_secret_input(party):
    """What a party receives for two different secrets passes the same uniformity test."""
    secret_a = torch.zeros(64, 8)
    secret_b = torch.linspace(-50, 50, 512).reshape(64, 8)
    view_a = run_protocol(_layer, secret_a, record=True, seed=1).received[party]
    view_b = run_protocol(_layer, secret_b, record=True, seed=2).received[party]
    assert _indistinguishable(view_a, view_b)


def test_the_view_test_can_fail():
    async def leaky(ctx, a):
        (other,) = await ctx.exchange(a + (a if ctx.party == 0 else -a))  # sends 2x its share or 0: reveals x
        return a
    secret_a, secret_b = torch.zeros(64, 8), torch.full((64, 8), 3.0)
    view_a = run_protocol(leaky, secret_a, record=True, seed=1).received[1]
    view_b = run_protocol(leaky, secret_b, record=True, seed=2).received[1]
    assert not _indistinguishable(view_a, view_b)


def test_only_declared_outputs_are_opened_to_the_client(bert_session):
    plan, _, _ = bert_session
    reveals = [n for n in plan.graph.nodes if n.op == "mpc.reveal"]
    assert {n.name for n in reveals} == set(plan.graph.outputs)
    assert all(n.attrs["to"] == "client" for n in reveals)


def test_runs_use_separate_threads(bert_session):
    plan, session, inputs = bert_session
    seen = set()
    original = threading.Thread.start

    def spy(self):
        seen.add(self.name)
        return original(self)
    threading.Thread.start = spy
    try:
        session.run(inputs)
    finally:
        threading.Thread.start = original
    assert {"mpcc-party-0", "mpcc-party-1"} <= seen


def _layer_with(weight_values):
    async def protocol(ctx, a):
        w_ring = torch.round(weight_values * 2**16).to(torch.int64)
        weight = None if ctx.party == 0 else (
            torch.empty(8, 8, dtype=torch.int64, device="meta") if ctx.meta else w_ring.to(ctx.device))
        h = await arith.trunc(ctx, await arith.linear_server(ctx, a, weight, (8, 8), "w", ctx.backend.matmul))
        return await nl.gelu(ctx, h)
    return protocol


def test_client_view_does_not_depend_on_the_weights():
    x = torch.linspace(-3, 3, 512).reshape(64, 8)
    view_a = run_protocol(_layer_with(torch.zeros(8, 8)), x, record=True, seed=1).received[0]
    view_b = run_protocol(_layer_with(torch.linspace(-2, 2, 64).reshape(8, 8)), x, record=True, seed=2).received[0]
    assert _indistinguishable(view_a, view_b)


def test_dealer_failure_stops_the_parties(bert_session, monkeypatch):
    plan, _, inputs = bert_session
    session = Session(plan, bert_session[1].weights, progress=False, timeout=10)
    import mpcc.runtime.dealer as dealer_module

    def broken_node(*args, **kwargs):
        raise RuntimeError("dealer disk full")
    monkeypatch.setattr(dealer_module.Replay, "node", broken_node)
    with pytest.raises(RunError, match="dealer disk full"):
        session.run(inputs)


@pytest.mark.parametrize("backend", ["cpu", "limb", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_same_results_on_every_backend(backend, tiny_gpt2):
    inputs = {"input_ids": token_ids(5, 120, seed=9)}
    plan = mpcc.compile(tiny_gpt2, inputs)
    (logits,), stats = mpcc.run(plan, inputs, tiny_gpt2.state_dict(), backend=backend, progress=False)
    (expected,) = reference_outputs(tiny_gpt2, inputs)
    assert (logits - expected).abs().max() < 1e-2
    assert stats.rounds == plan.cost().rounds


def test_dealer_stays_within_its_lookahead(bert_session, tiny_bert):
    plan, session, inputs = bert_session
    by_node: dict[str, int] = {}
    for material in plan.cost().materials:
        if material.stored:
            by_node[material.node] = by_node.get(material.node, 0) + 8 * math.prod(material.shape)
    tight = Session(plan, tiny_bert.state_dict(), progress=False, lookahead_bytes=1)
    outputs, stats = tight.run(inputs)
    for got, want in zip(outputs, reference_outputs(tiny_bert, inputs)):
        assert (got - want).abs().max() < 1e-2
    # nodes run together (their material is taken as each step needs it), and the dealer deals in the
    # order they start: it is ahead by at most the material of the nodes running at one step, and one node
    schedule = plan.cost().schedule
    running = [sum(size for node, size in by_node.items() if schedule[node][0] <= step < max(schedule[node][1], 1))
               for step in range(plan.cost().rounds + 1)]
    assert 0 < stats.dealer_ahead_bytes <= 1 + max(running) + max(by_node.values()), "beyond the bound"
    _, loose = session.run(inputs)
    assert loose.dealer_ahead_bytes > stats.dealer_ahead_bytes


def test_a_failing_party_does_not_leave_the_dealer_waiting(bert_session, tiny_bert, monkeypatch):
    plan, _, inputs = bert_session
    import mpcc.runtime.executor as executor
    original = executor._run

    def server_fails_midway(node, graph, env, ctx, *rest):   # (a bad weight is now refused before the run)
        if ctx.party == 1 and not ctx.meta and node.op == "mpc.gelu":
            raise RuntimeError("server out of memory")
        return original(node, graph, env, ctx, *rest)
    monkeypatch.setattr(executor, "_run", server_fails_midway)
    session = Session(plan, tiny_bert.state_dict(), progress=False, timeout=60, lookahead_bytes=1)
    start = time.perf_counter()
    with pytest.raises(RunError, match="server failed"):
        session.run(inputs)
    assert time.perf_counter() - start < 20, "the dealer was cancelled, not waited out"


def test_shape_runs_reuse_twin_nodes_exactly(bert_session, monkeypatch):
    """The dealer and the cost model copy a layer's record to its twins: it must
    equal what running every node's protocol records."""
    from mpcc.backends import get_backend
    from mpcc.runtime.executor import execute
    from mpcc.runtime.shape_context import CostContext, DealerContext

    plan = bert_session[0]

    def record(context, reuse: bool):
        ctx = context()
        if not reuse:
            monkeypatch.setattr(ctx, "recall", lambda node: False)
        with torch.no_grad():
            execute(plan.graph, ctx)
        return ctx

    dealers = [record(lambda: DealerContext(get_backend("cpu"), plan.frac_bits), reuse) for reuse in (False, True)]
    full, reused = ([entry[:7] + entry[8:] for entry in ctx.tape] for ctx in dealers)  # all but the function
    assert reused == full and dealers[0].materials == dealers[1].materials
    run_nodes = {entry[0] for t in dealers[1]._templates.values() if t for entry in t[0][-2]}
    assert {entry[0] for entry in reused} - run_nodes, "some nodes were copied from a twin rather than run"
    for party in (0, 1):
        costs = [record(lambda: CostContext(party, get_backend("cpu"), plan.frac_bits), reuse) for reuse in (False, True)]
        assert {k: v.as_dict() for k, v in costs[0].by_node.items()} == {k: v.as_dict() for k, v in costs[1].by_node.items()}
        assert costs[0].materials == costs[1].materials
