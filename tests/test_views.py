"""What each party sees: every opening it reconstructs is uniform and the same
for two secrets, no mask is used in two inferences, and no dealer label is
drawn twice. Each planted leak (a dropped or reused mask) must fail these tests.

A party's reconstruction of an opening is its own sent tensor (or its own
share, for a one-way message) joined with the message it received; that is
what a leak shows up in, even when the message alone looks uniform.
"""
from __future__ import annotations

import sys
import threading
from collections import defaultdict

import pytest
import torch

import mpcc
from mpcc.backends.prg import Prg
from mpcc.frontend import reference_outputs
from mpcc.passes.approximate import PRESETS
from mpcc.runtime import Session
from mpcc.runtime.context import Context
from mpcc.runtime.shape_context import ShapeContext

from .conftest import token_ids

SIGMAS = 6.0   # thousands of (group, bit) cells per test: 6 sigma keeps false alarms below 1e-5
SEQ = 8


@pytest.fixture(scope="module")
def model(tiny_bert):
    return tiny_bert


def _session(model, record=True, approx="exact", example=None):
    example = {"input_ids": token_ids(SEQ, 120)} if example is None else example
    plan = mpcc.compile(model, example, approx=approx)   # a fresh plan: no tape yet
    session = Session(plan, model.state_dict(), progress=False, timeout=30)
    session.record_views = record
    return plan, session


def _openings(session, inputs, party):
    outputs, _ = session.run(inputs)
    ops = {n.name: n.op for n in session.plan.graph.nodes}
    return [o for o in session.views[party] if ops[o.node] != "mpc.reveal"], outputs


def _group_key(opening, ops, index):
    return ops[opening.node], index, opening.combine, opening.bits, opening.setup


TOP_BITS = 4   # the top bits of a width are also tested jointly: a small value's sign extension
JOINT_MIN = 16 << TOP_BITS   # the joint test needs 16 expected per cell (a normal approximation)


def _bit_counts(values_by_group):
    """group -> (frequency of each cell, elements), over each group's pooled values. The cells
    are "bit j is 1" for every bit position j (each has probability 1/2 when the values are
    uniform) and "the top bits read k" for each k (probability 2^-TOP_BITS each)."""
    counts = {}
    for group, (values, bits) in values_by_group.items():
        width = 64 if bits is None else bits
        words = torch.cat([v.reshape(-1) for v in values]).cpu()
        ones = ((words.unsqueeze(-1) >> torch.arange(width)) & 1).sum(0).double()
        top = min(TOP_BITS, width)
        cells = (words >> (width - top)) & ((1 << top) - 1)
        joint = torch.bincount(cells, minlength=1 << top).double()
        counts[group] = (ones, joint, words.numel())
    return counts


def _z(frequency, probability, n):
    return (frequency - probability).abs() / (probability * (1 - probability) / n) ** 0.5


def _pooled(openings, ops, value):
    """Pool ``value(opening)`` by (op, position within its node, combine, width, setup)."""
    groups: dict = {}
    position: dict = defaultdict(int)
    for opening in openings:
        index = position[opening.node]
        position[opening.node] += 1
        key = _group_key(opening, ops, index)
        groups.setdefault(key, ([], opening.bits))[0].append(value(opening))
    return groups


def _non_uniform(counts) -> list[str]:
    problems = []
    for group, (ones, joint, n) in counts.items():
        z = _z(ones / n, 0.5, n)
        if float(z.max()) > SIGMAS:
            problems.append(f"{group}: bit {int(z.argmax())} is 1 in {float(ones[z.argmax()]) / n:.2f} of {n}")
        cell = 1 / joint.numel()
        z = _z(joint / n, cell, n)
        if n >= JOINT_MIN and float(z.max()) > SIGMAS:
            problems.append(f"{group}: the top bits read {int(z.argmax())} in {float(joint[z.argmax()]) / n:.2f} "
                            f"of {n}, not {cell:.2f}")
    return problems


def _different(counts_a, counts_b) -> list[str]:
    problems = []
    for group in counts_a.keys() & counts_b.keys():
        (ones_a, joint_a, n_a), (ones_b, joint_b, n_b) = counts_a[group], counts_b[group]
        tests = [("a bit", ones_a, ones_b, 0.5)]
        if min(n_a, n_b) >= JOINT_MIN:
            tests.append(("the top bits", joint_a, joint_b, 1 / joint_a.numel()))
        for name, a, b, p in tests:
            sigma = (p * (1 - p) * (1 / n_a + 1 / n_b)) ** 0.5
            z = (a / n_a - b / n_b).abs() / sigma
            if float(z.max()) > SIGMAS:
                problems.append(f"{group}: {name} ({int(z.argmax())}) differs between the two secrets")
    return problems


def opened_values_leak(model, party, approx="exact", secrets=None) -> list[str]:
    """Run two secrets (two sessions); every reconstructed opening must be uniform and alike.
    ``secrets``: the two input dicts (default: token ids, and all zeros)."""
    if secrets is None:
        secrets = ({"input_ids": token_ids(SEQ, 120, 1)}, {"input_ids": torch.zeros(1, SEQ, dtype=torch.int64)})
    counts = []
    for inputs in secrets:
        plan, session = _session(model, approx=approx, example=secrets[0])
        openings, _ = _openings(session, inputs, party)
        ops = {n.name: n.op for n in plan.graph.nodes}
        counts.append(_bit_counts(_pooled(openings, ops, lambda o: o.reconstructed())))
    return _non_uniform(counts[0]) + _non_uniform(counts[1]) + _different(*counts)


def cross_inference_leak(model, party, approx="exact") -> list[str]:
    """Two inferences of one session on the same secret: the difference of what the
    party reconstructs must look uniform (a reused mask makes it the data's difference)."""
    plan, session = _session(model, approx=approx)
    inputs = {"input_ids": token_ids(SEQ, 120, 3)}
    first, _ = _openings(session, inputs, party)
    second, _ = _openings(session, inputs, party)
    first = [o for o in first if not o.setup]
    assert [(o.node, o.bits) for o in first] == [(o.node, o.bits) for o in second]
    ops = {n.name: n.op for n in plan.graph.nodes}
    paired = iter(second)

    def difference(opening):
        other = next(paired)
        a, b = opening.reconstructed(), other.reconstructed()
        diff = a ^ b if opening.combine == "xor" else a - b
        return diff if opening.bits is None else diff & ((1 << opening.bits) - 1)
    return _non_uniform(_bit_counts(_pooled(first, ops, difference)))


# --------------------------------------------------------------------------- planted leaks
def plant(monkeypatch, protocol: str, how: str, holder: str | None = None):
    """Make every draw that ``protocol`` makes with ``ctx.rand`` (of ``holder``, if given)
    zero (``drop``) or the same in every call and inference (``reuse``), for both parties
    and the dealer alike, so outputs stay right. Twin-node copying is off: every node's
    draws are made by its own protocol call."""
    planted: set[str] = set()
    label_of = Context._label

    def spy(self, scope):
        label = label_of(self, scope)
        caller = sys._getframe(2)
        if caller.f_code.co_name == protocol and (holder is None or sys._getframe(1).f_locals.get("holder") == holder):
            planted.add(label)
        return label
    ring = Prg.ring

    def planted_ring(self, label, shape):
        inner = label.partition("/")[2]
        if inner not in planted:
            return ring(self, label, shape)
        if how == "drop":
            return torch.zeros(tuple(shape), dtype=torch.int64)
        return ring(self, f"reused-{protocol}" + ("" if protocol == "truncate" else "-" + inner.split("/")[0]), shape)
    monkeypatch.setattr(Context, "_label", spy)
    monkeypatch.setattr(Prg, "ring", planted_ring)
    monkeypatch.setattr(ShapeContext, "recall", lambda self, node: False)


PLANTED = [("truncate", "drop", None), ("mask", "drop", None), ("ltz_bits", "drop", None), ("exp", "drop", None),
           ("fourier_segments", "drop", None), ("narrowed", "drop", None), ("linear_server", "drop", "client"),
           ("linear_server_wire", "drop", "client"), ("lookup_server", "drop", "client"), ("lift", "drop", None),
           ("gelu_secformer", "drop", None, "secformer")]   # (protocol, how, holder[, the preset it runs in])
REUSED = [("truncate", "reuse", None), ("narrowed", "reuse", None), ("linear_server", "reuse", "client"),
          ("lookup_server", "reuse", "client"), ("lift", "reuse", None)]


@pytest.mark.parametrize("party", [0, 1])
def test_every_opening_is_uniform_and_independent_of_the_secret(model, party):
    assert opened_values_leak(model, party) == []


@pytest.mark.parametrize("party", [0, 1])
def test_no_mask_is_used_in_two_inferences(model, party):
    assert cross_inference_leak(model, party) == []


@pytest.mark.parametrize("approx", sorted(set(PRESETS) - {"exact"}))
def test_the_presets_substitutes_open_only_masked_values(model, approx):
    for party in (0, 1):
        assert opened_values_leak(model, party, approx) == []
        assert cross_inference_leak(model, party, approx) == []


@pytest.fixture(scope="module")
def eager_layer():
    """A BERT layer on the client's hidden states (real inputs): eager attention, fused into
    sdpa; the input masked once (``mask_client_inputs``)."""
    from mpcc.bench import bert_layer
    return bert_layer(hidden=32, heads=4, ffn=64)


def layer_secrets():
    hidden = torch.randn(1, SEQ, 32, generator=torch.Generator().manual_seed(5))
    return {"hidden_states": hidden}, {"hidden_states": torch.full_like(hidden, 0.5)}


@pytest.mark.parametrize("approx", ["exact", "mpcformer"])
def test_a_layer_on_real_client_inputs_opens_only_masked_values(eager_layer, approx):
    plan, _ = _session(eager_layer, approx=approx, example=layer_secrets()[0])
    ops = {n.op for n in plan.graph.nodes}
    assert "mpc.sdpa" in ops and any(n.attrs.get("masked") for n in plan.graph.nodes if n.op == "mpc.share")
    for party in (0, 1):
        assert opened_values_leak(eager_layer, party, approx, layer_secrets()) == []


def test_a_dropped_client_input_mask_is_seen(eager_layer, monkeypatch):
    plant(monkeypatch, "client_input", "drop", "client")
    assert opened_values_leak(eager_layer, 1, "exact", layer_secrets()) != []


@pytest.mark.parametrize("planted", PLANTED, ids=[p[0] for p in PLANTED])
def test_a_dropped_mask_fails_the_opened_value_test(model, monkeypatch, planted):
    protocol, how, holder, approx = (planted + ("exact",))[:4]
    plant(monkeypatch, protocol, how, holder)
    plan, session = _session(model, approx=approx)
    inputs = {"input_ids": token_ids(SEQ, 120, 1)}
    outputs, _ = session.run(inputs)   # the planted leak keeps results right: only the views show it
    reference = mpcc.interpret(plan, inputs, model.state_dict())
    assert (outputs[0] - reference[0]).abs().max() < 1e-2
    assert opened_values_leak(model, 0, approx) + opened_values_leak(model, 1, approx) != []


@pytest.mark.parametrize("protocol, how, holder", REUSED, ids=[p[0] for p in REUSED])
def test_a_reused_mask_fails_the_cross_inference_test(model, monkeypatch, protocol, how, holder):
    plant(monkeypatch, protocol, how, holder)
    assert cross_inference_leak(model, 0) + cross_inference_leak(model, 1) != []


# --------------------------------------------------------------------------- the dealer's tape
def count_draws(monkeypatch) -> dict:
    """(thread, seed, PRG name) -> how often it was drawn, from now on."""
    draws: dict = defaultdict(int)
    ring = Prg.ring

    def counted(self, label, shape):
        draws[(threading.current_thread().name, self.seed, label)] += 1
        return ring(self, label, shape)
    monkeypatch.setattr(Prg, "ring", counted)
    return draws


def test_no_label_is_drawn_twice_and_scoped_draws_mask_server_statics(model, monkeypatch):
    plan, session = _session(model, record=False)
    draws = count_draws(monkeypatch)
    inputs = {"input_ids": token_ids(SEQ, 120, 4)}
    session.run(inputs)
    session.run(inputs)
    session.dealer.deal()
    repeated = {key: n for key, n in draws.items() if n > 1}
    assert repeated == {}
    scoped = {key[2] for key in draws if key[2].startswith("deploy/")}
    assert scoped, "the plan has server linears: their weight masks are deployment-scoped"
    tape = plan.__dict__["_dealer_tapes"][(session.backend.name, plan.frac_bits)][0]
    static = session.states[1].static
    for node, label, op, shape, kind, holder, scope, fn, args in tape:
        if scope:   # the one allowed use: B masks a value fixed for the deployment, and only the server holds B
            assert holder == "server", (node, label)
            assert scope.split("^")[0] in static, (node, scope)


def test_the_tape_check_catches_a_repeated_label(model, monkeypatch):
    plan, session = _session(model, record=False)
    draws = count_draws(monkeypatch)
    monkeypatch.setattr("mpcc.runtime.session.fresh_label", lambda: "same-label")
    monkeypatch.setattr(session.dealer, "claim", lambda label: label)   # the refusal, disabled
    inputs = {"input_ids": token_ids(SEQ, 120, 4)}
    session.run(inputs)
    session.run(inputs)
    assert any(n > 1 for n in draws.values())


class _TiedEmbeddings(torch.nn.Module):
    """One table read by two lookups that start in the same step (BART's shared embedding)."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(20, 8)
        self.out = torch.nn.Linear(8, 8)

    def forward(self, a, b):
        return self.out(self.table(a)), self.table(b) * 2


def test_a_weight_read_twice_in_one_step_is_sent_once():
    """D = W - B is made in B's memory: a second reader in the same step used to make it again
    from D and send B, the weight's mask, so the client held both D and B, hence W, and
    computed with B in place of D (wrong outputs). One message per weight, shared by both."""
    torch.manual_seed(0)
    module = _TiedEmbeddings().eval()
    inputs = {"a": token_ids(6, 20, 1), "b": token_ids(4, 20, 2)}
    plan = mpcc.compile(module, inputs)
    session = Session(plan, module.state_dict(), progress=False, timeout=30)
    session.record_views = True
    outputs, stats = session.run(inputs)
    for got, want in zip(outputs, reference_outputs(module, inputs)):
        assert (got - want).abs().max() < 1e-3
    table_setups = [o for o in session.views[0] if o.setup and tuple(o.received.shape) == (20, 8)]
    assert len(table_setups) == 1
    assert stats.setup_bytes == plan.cost().setup_bytes
