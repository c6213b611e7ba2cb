"""Passes: visibility, folding, one-hot embedding, secret-index check, pipeline driver."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

import mpcc
from mpcc.ir import Graph, Node, TensorType
from mpcc.passes import (DEFAULT_PIPELINE, SECURE_PIPELINE, PassError, SecretIndexError, UnknownPassError, get_pass, register_pass,
                         run_pipeline)
from mpcc.passes.registry import PASSES

from .conftest import token_ids

GOLDEN = Path(__file__).parent / "golden"


def derived_only_from(graph: Graph, name: str) -> set[str]:
    """Values whose non-public ancestry is exactly the input ``name``."""
    sources: dict[str, set[str]] = {}
    for node in graph.nodes:
        if node.op in ("input", "param"):
            sources[node.name] = {node.name}
        elif node.op == "const":
            sources[node.name] = set()
        else:
            sources[node.name] = set().union(*(sources[o] for o in node.operands)) if node.operands else set()
    return {n for n, s in sources.items() if s == {name}}


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_visibility_and_no_secret_index(request, fixture):
    model = request.getfixturevalue(fixture)
    graph = run_pipeline(mpcc.trace(model, {"input_ids": token_ids(6, 120)}))
    client_values = derived_only_from(graph, "input_ids")
    assert {"input_ids"} < client_values, "the one-hot of the ids must be the client's"
    for name in client_values:
        assert graph[name].type.vis == "client"
    for node in graph.nodes:
        assert node.type.vis in ("public", "client", "server", "shared")
        if node.op == "embedding":
            assert graph[node.operands[1]].type.vis == "public"
        if node.op in ("index", "gather", "index_select"):
            pytest.fail(f"{node.name}: indexing survived the pipeline")
        if node.op == "param":
            assert node.type.vis == "server"
    ops = {n.op for n in graph.nodes}
    assert "one_hot" in ops
    assert not ops & {"arange", "cumsum", "diff", "full", "new_full", "eq", "le", "bitwise_and"}


def test_gpt2_causal_mask_is_folded_and_semantics_kept(tiny_gpt2):
    inputs = {"input_ids": token_ids(5, 120)}
    traced = mpcc.trace(tiny_gpt2, inputs)
    compiled = run_pipeline(traced)
    masks = [n for n in compiled.nodes if n.op == "const" and n.type.kind == "bool"]
    assert masks and all(n.type.vis == "public" for n in masks)
    assert bool(torch.equal(masks[0].attrs["value"].reshape(5, 5), torch.ones(5, 5, dtype=torch.bool).tril()))

    @given(st.lists(st.integers(0, 119), min_size=5, max_size=5))
    def same_meaning(ids):
        feed = {"input_ids": torch.tensor([ids])}
        before, = mpcc.interpret(traced, feed, tiny_gpt2.state_dict())
        after, = mpcc.interpret(compiled, feed, tiny_gpt2.state_dict())
        assert torch.allclose(before, after, atol=1e-9)
    same_meaning()


class ArgmaxLookup(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.score = torch.nn.Linear(4, 10)
        self.table = torch.nn.Embedding(10, 3)

    def forward(self, x):
        return self.table(torch.argmax(self.score(x), dim=-1))


def test_secret_index_is_refused_with_node_and_module():
    with pytest.raises(SecretIndexError, match=r"table.*shared.*index"):
        mpcc.compile(ArgmaxLookup(), {"x": torch.randn(2, 4)})


def test_server_owned_indices_stay_local():
    model = ArgmaxLookup()
    graph = run_pipeline(mpcc.trace(model.table, {"input": torch.tensor([[1, 2]])}, owners={"input": "server"}))
    assert [n.type.vis for n in graph.nodes if n.op == "embedding"] == ["server"]


def test_infer_visibility_joins_owners():
    x = Node("x", "input", (), {"owner": "client"}, TensorType((2,), "real"))
    y = Node("y", "input", (), {"owner": "server"}, TensorType((2,), "real"))
    a = Node("a", "neg", ("x",), {}, TensorType((2,), "real"))
    b = Node("b", "add", ("a", "y"), {"alpha": 1}, TensorType((2,), "real"))
    c = Node("c", "full_like", ("b",), {"fill_value": 1, "dtype": None}, TensorType((2,), "real"))
    graph = get_pass("infer_visibility")(Graph((x, y, a, b, c), ("b", "c")))
    assert [n.type.vis for n in graph.nodes] == ["client", "server", "client", "shared", "public"]


def test_passes_do_not_mutate_their_input(tiny_bert):
    traced = mpcc.trace(tiny_bert, {"input_ids": token_ids(4, 120)})
    text = traced.dump()
    run_pipeline(traced)
    assert traced.dump() == text


def test_pipeline_names_the_broken_pass_and_those_before():
    @register_pass("test_break_graph")
    def break_graph(graph):
        last = graph.nodes[-1]
        return graph.replace_nodes(graph.nodes[:-1] + (last.with_(operands=("ghost",) + last.operands[1:]),))
    try:
        graph = mpcc.trace(torch.nn.Linear(2, 2), (torch.ones(1, 2),))
        with pytest.raises(PassError, match=r"test_break_graph \(after: infer_visibility\).*ghost"):
            run_pipeline(graph, ["infer_visibility", "test_break_graph"])
    finally:
        PASSES.pop("test_break_graph")
    with pytest.raises(UnknownPassError, match="no pass named"):
        run_pipeline(graph, ["infer_visibility", "nope"])


class Golden(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(6, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, ids):
        x = self.norm(self.embed(ids))
        mask = torch.ones(ids.shape[-1], ids.shape[-1], dtype=torch.bool).tril()
        scores = (x @ x.transpose(-1, -2)).masked_fill(~mask, -1e4)
        return torch.nn.functional.gelu(self.proj(torch.softmax(scores, -1) @ x))


@pytest.mark.parametrize("after", ["import"] + list(SECURE_PIPELINE))
def test_golden_ir_after_each_pass(after):
    """Snapshot of a tiny model's IR after each pass, the last being its plan; set
    MPCC_UPDATE_GOLDEN=1 to rewrite (and say why in the commit)."""
    graph = mpcc.trace(Golden(), {"ids": torch.tensor([[1, 2, 3]])})
    if after != "import":
        graph = run_pipeline(graph, SECURE_PIPELINE[:SECURE_PIPELINE.index(after) + 1])
    path = GOLDEN / f"golden_after_{after}.ir"
    if os.environ.get("MPCC_UPDATE_GOLDEN"):
        path.write_text(graph.dump())
    assert graph.dump() == path.read_text()


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_gpt2"])
def test_fusion_and_lowering_keep_the_meaning(request, fixture):
    """The plan's ops, read by their plaintext references, compute what the analysed graph computes."""
    model = request.getfixturevalue(fixture)
    inputs = {"input_ids": token_ids(6, 120)}
    traced = mpcc.trace(model, inputs)
    analysed = mpcc.interpret(run_pipeline(traced, DEFAULT_PIPELINE), inputs, model.state_dict())
    planned = mpcc.interpret(run_pipeline(traced, SECURE_PIPELINE), inputs, model.state_dict())
    for a, b in zip(analysed, planned):
        assert (a - b).abs().max() < 1e-9


def test_sibling_linears_become_one_linear_and_keep_meaning():
    """Query, key and value of each BERT layer: one linear over the concatenated weights, its
    output sliced; the plan means the same (interpreted against torch), the client sends each
    layer input's parts once instead of three times, and the secure run agrees."""
    from mpcc.frontend import reference_outputs
    from mpcc.models import example_inputs, load_model
    loaded = load_model("tiny-bert")
    inputs = example_inputs(loaded, seq_len=6)
    fused = mpcc.compile(loaded.model, inputs)
    plain = mpcc.compile(loaded.model, inputs, passes=[p for p in SECURE_PIPELINE if p != "fuse_sibling_linears"])
    layers = loaded.model.config.num_hidden_layers
    linears = [n for n in fused.graph.nodes if n.op == "mpc.linear_server"]
    assert len(linears) == len([n for n in plain.graph.nodes if n.op == "mpc.linear_server"]) - 2 * layers
    cats = [n for n in fused.graph.nodes if n.op == "cat"]
    assert len(cats) == 2 * layers and all(n.type.vis == "server" for n in cats)   # weights and biases
    assert sum(n.op == "slice" and n.type.vis == "shared" for n in fused.graph.nodes) == 3 * layers
    weights = loaded.model.state_dict()
    expected = reference_outputs(loaded.model, inputs)
    for plan in (fused, plain):
        got = mpcc.interpret(plan, inputs, weights)
        assert max(float((g - e).abs().max()) for g, e in zip(got, expected)) < 1e-10
    assert fused.cost().per_party[0].online_bytes < plain.cost().per_party[0].online_bytes
    assert fused.cost().rounds == plain.cost().rounds
    out, stats = mpcc.run(fused, inputs, weights, progress=False)
    assert max(float((o - e).abs().max()) for o, e in zip(out, expected)) < 1e-2
    assert stats.online_bytes == tuple(p.online_bytes for p in fused.cost().per_party)


def test_sibling_linears_whose_weight_is_made_later_are_left_apart():
    """A sibling's weight computed after the first linear (a scaled weight, traced in place)
    cannot join a concatenation that stands where the first linear stood: that group is left
    as it was, and the plan still compiles and means the same (found in review)."""
    class Late(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(4, 3, bias=False)   # both without a bias: one group
            self.second = torch.nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(1)))

        def forward(self, h):
            a = self.first(h)
            return a + torch.nn.functional.linear(h, self.second * 0.5)
    model = Late()
    h = {"h": torch.randn(2, 4, generator=torch.Generator().manual_seed(2))}
    plan = mpcc.compile(model, h)
    assert not any(n.op == "cat" for n in plan.graph.nodes)
    from mpcc.frontend import reference_outputs
    assert (mpcc.interpret(plan, h, model.state_dict())[0] - reference_outputs(model, h)[0]).abs().max() < 1e-12
