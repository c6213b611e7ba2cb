"""fuse_masked_attention keeps the function: eager attention with random chains of masks
and scalings, compiled, then read by the plan's plaintext references (mpcc.interpret), must
equal torch, or the compiler must refuse it (a constant fixed point cannot hold)."""
from __future__ import annotations

import torch
from hypothesis import example, given, settings, strategies as st

import mpcc
from mpcc.const_check import ConstantRangeError
from mpcc.frontend import reference_outputs

FILLS = [torch.finfo(torch.float32).min, -torch.inf, -1e4, -1e5, -50.0]
# scores never grow past O(100) (exclusions assume kept scores far above -1e4, as in the protocols' domain);
# 1e-4 shrinks an added -1e4 to a number the softmax must weigh
FACTORS = {"mul": [0.5, 2.0, 0.125, 1e-4], "div": [2.0, 8.0, 0.5]}


class Recipe(torch.nn.Module):
    """q k^T, then ``steps`` in order (("add", mask) | ("where", keep, fill) | ("fill", drop, value) |
    ("mul", c) | ("div", c)), softmax, then times v."""

    def __init__(self, steps):
        super().__init__()
        self.qkv = torch.nn.Linear(4, 12)
        self.steps = steps

    def forward(self, x):
        q, k, v = self.qkv(x).split(4, -1)
        scores = q @ k.transpose(-1, -2)
        for step in self.steps:
            kind = step[0]
            if kind == "add":
                scores = scores + step[1]
            elif kind == "where":
                scores = torch.where(step[1], scores, torch.tensor(step[2]))
            elif kind == "fill":
                scores = scores.masked_fill(step[1], step[2])
            elif kind == "mul":
                scores = scores * step[1]
            else:
                scores = scores / step[1]
        return torch.softmax(scores, -1) @ v


@st.composite
def recipes(draw):
    n = draw(st.integers(2, 4))
    steps = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["add", "where", "fill", "mul", "div"]))
        if kind == "add":
            values = draw(st.lists(st.sampled_from([0.0, 1.5, -2.0] + FILLS), min_size=n * n, max_size=n * n))
            steps.append(("add", torch.tensor(values).reshape(n, n)))
        elif kind in ("where", "fill"):
            bits = draw(st.lists(st.booleans(), min_size=n * n, max_size=n * n))
            steps.append((kind, torch.tensor(bits).reshape(n, n), draw(st.sampled_from(FILLS))))
        else:
            steps.append((kind, draw(st.sampled_from(FACTORS[kind]))))
    return n, steps


_MIN = torch.finfo(torch.float32).min
_ROW = torch.tensor([[True, True, True], [False, False, False], [True, False, True]])   # row 1 keeps nothing


@settings(max_examples=150, deadline=None)
@given(recipes(), st.integers(0, 2**16))
# the cases a review found, always run: an added -1e4 that a later scaling makes -1 (not an exclusion);
# a row the masks leave empty; a mask before a scaling that the final fill's chain does not include
@example((3, [("add", torch.tensor([[0.0, -1e4, 0.0]] * 3)), ("mul", 1e-4)]), 0)
@example((3, [("where", _ROW, _MIN)]), 0)
@example((2, [("add", torch.tensor([[0.0, 0.0], [-1e4, 0.0]])), ("mul", 2.0), ("fill", torch.zeros(2, 2).bool(), -50.0),
              ("fill", torch.tensor([[False, False], [False, True]]), -1e4)]), 0)
def test_mask_chains_compile_to_the_same_function_or_are_refused(recipe, seed):
    n, steps = recipe
    torch.manual_seed(seed)
    module = Recipe(steps).eval()
    x = torch.randn(1, n, 4, generator=torch.Generator().manual_seed(seed))
    (want,) = reference_outputs(module, (x,))
    try:
        plan = mpcc.compile(module, (x,))
    except ConstantRangeError:
        return   # refused by name: a mask the fusion could not take met as a number
    (got,) = mpcc.interpret(plan.graph, {"x": x}, module.state_dict())
    both_nan = torch.isnan(got) & torch.isnan(want)
    assert bool((both_nan | torch.isclose(got, want, rtol=1e-6, atol=1e-9)).all()), (steps, got, want)
    if any(node.op == "mpc.sdpa" for node in plan.graph.nodes):
        assert not bool(torch.isnan(want).any())
