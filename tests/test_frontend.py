"""Tracing real models: import, dump, parse back, interpret within 1e-5 of torch."""
from __future__ import annotations

import pytest
import torch

import mpcc
from mpcc.frontend import reference_outputs
from mpcc.ir import parse
from mpcc.passes import run_pipeline
from mpcc.verify import lint

from .conftest import token_ids




def check_model(model, inputs, *, tolerance=1e-5):
    graph = mpcc.trace(model, inputs)
    lint(graph, shapes=True)
    assert parse(graph.dump()) == graph
    compiled = run_pipeline(graph)
    assert parse(compiled.dump()) == compiled
    expected = reference_outputs(model, inputs)
    for g in (graph, compiled):
        outputs = mpcc.interpret(g, inputs, model.state_dict())
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            assert got.shape == want.shape
            assert (got - want.double()).abs().max().item() < tolerance
    return compiled


@pytest.mark.parametrize("fixture", ["tiny_bert", "tiny_bert_classifier", "tiny_gpt2"])
@pytest.mark.parametrize("seq_len", [1, 7])
def test_hf_models_match_torch(request, fixture, seq_len):
    model = request.getfixturevalue(fixture)
    check_model(model, {"input_ids": token_ids(seq_len, 120)})


def test_bert_with_attention_mask_and_token_types(tiny_bert):
    ids = token_ids(6, 120)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    types = torch.tensor([[0, 0, 0, 1, 1, 1]])
    check_model(tiny_bert, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})


def test_pretrained_minilm_from_directory(minilm):
    inputs = {"input_ids": minilm.tokenizer("private text stays private", return_tensors="pt")["input_ids"]}
    check_model(minilm.model, inputs)


class Block(torch.nn.Module):
    """A model from the op list the frontend promises beyond Hugging Face."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.norm = torch.nn.LayerNorm(16)
        self.inner = torch.nn.Linear(16, 32)
        self.outer = torch.nn.Linear(32, 16)

    def forward(self, ids):
        x = self.norm(self.embed(ids))
        scores = torch.softmax(x @ x.transpose(-1, -2) / 4.0, dim=-1)
        h = torch.nn.functional.gelu(self.inner(scores @ x))
        h = torch.relu(h) - 0.5 * h.mean(dim=-1, keepdim=True)
        y = self.outer(h).reshape(ids.shape[0], -1, 4, 4).permute(0, 2, 1, 3)
        return torch.cat([y, y * y], dim=1).flatten(1).sum(-1), torch.tanh(y).squeeze(0)


def test_generic_module_matches_torch():
    torch.manual_seed(1)
    model = Block().eval()
    check_model(model, {"ids": token_ids(5, 50)})


def test_positional_tuple_inputs():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 2)).eval()
    x = torch.randn(3, 8)
    graph = mpcc.trace(model, (x,))
    (name,) = [n.name for n in graph.inputs]
    got, = mpcc.interpret(graph, {name: x}, model.state_dict())
    assert (got - model(x).double()).abs().max() < 1e-5


class Sorter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = torch.nn.Linear(4, 4)

    def forward(self, x):
        return torch.sort(self.inner(x), dim=-1).values


class Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = torch.nn.ModuleDict({"sorter": Sorter()})

    def forward(self, x):
        return self.block["sorter"](x)


def test_unsupported_op_names_aten_op_and_module_path():
    with pytest.raises(mpcc.UnsupportedOpError) as info:
        mpcc.trace(Outer(), (torch.randn(2, 4),))
    message = str(info.value)
    assert "aten.sort" in message
    assert "block.sorter" in message
    assert info.value.module == "block.sorter"


def test_bad_example_inputs_and_owners():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(mpcc.TraceError, match="example_inputs"):
        mpcc.trace(model, "not a tensor")
    with pytest.raises(mpcc.TraceError, match="owners"):
        mpcc.trace(model, {"input": torch.zeros(1, 4)}, owners={"nope": "server"})
    with pytest.raises(mpcc.TraceError, match="owner"):
        mpcc.trace(model, {"input": torch.zeros(1, 4)}, owners={"input": "everyone"})


def test_dropout_in_training_mode_is_ignored_by_tracing():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5)).train()
    graph = mpcc.trace(model, (torch.ones(1, 4),))
    assert model.training, "trace must restore the caller's training mode"
    assert "dropout" not in {n.op for n in graph.nodes}
