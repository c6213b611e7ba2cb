"""Every Hugging Face family of ``mpcc.zoo`` compiles and runs securely, error <= 1e-2
against float64 torch (the supported-models table in docs/models.md, by test)."""
from __future__ import annotations

import pytest
import torch

import mpcc
from mpcc.frontend import reference_outputs
from mpcc.zoo import FAMILIES, build

from .conftest import secure_error

NOT_YET: dict[str, str] = {}   # family -> why it does not run yet (strict xfail: fixing one fails here until it is removed)


@pytest.mark.parametrize("family", [pytest.param(name, marks=pytest.mark.xfail(reason=NOT_YET[name], strict=True))
                                    if name in NOT_YET else name for name in FAMILIES])
def test_family_runs_securely(family):
    model, inputs = build(family)
    owners = FAMILIES[family].owners
    plan = mpcc.compile(model, inputs, owners=owners)
    outputs, stats = mpcc.run(plan, inputs, model.state_dict(), progress=False)
    expected = reference_outputs(model, inputs)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= 1e-2
    assert stats.rounds == plan.cost().rounds


class EagerMasks(torch.nn.Module):
    """GPT-Neo's eager attention: a causal where() with finfo.min, then an additive mask with -inf."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).split(8, -1)
        scores = q @ k.transpose(-1, -2)
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        scores = torch.where(causal, scores, torch.tensor(torch.finfo(torch.float32).min))
        padding = torch.zeros(x.shape[1])
        padding[-1] = -torch.inf
        return torch.softmax(scores / 2.0 + padding, -1) @ v


def test_masks_with_finfo_min_and_inf_become_exclusions():
    torch.manual_seed(0)
    module, x = EagerMasks().eval(), torch.randn(1, 5, 8)
    plan, error = secure_error(module, (x,))
    sdpa = [n for n in plan.graph.nodes if n.op == "mpc.sdpa"]
    assert len(sdpa) == 1 and sdpa[0].attrs["scale"] == 0.5
    huge = [n.name for n in plan.graph.nodes if n.op == "const" and n.attrs["value"].is_floating_point()
            and bool((n.attrs["value"].isfinite() & (n.attrs["value"].abs() > 2.0 ** 40)).any())]
    assert huge == []   # finfo.min became an exclusion (-inf in the sdpa mask), not a number
    assert error < 1e-3


class ServerBias(torch.nn.Module):
    """T5's attention: a learned position bias (the server's) where a public mask keeps, finfo.min elsewhere."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)
        self.bias_table = torch.nn.Embedding(9, 1)

    def forward(self, x):
        q, k, v = (t.unsqueeze(1) for t in self.qkv(x).split(8, -1))
        n = x.shape[1]
        positions = torch.arange(n)[None, :] - torch.arange(n)[:, None] + 4
        bias = self.bias_table(positions).squeeze(-1)[None, None]
        keep = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
        mask = torch.where(keep, bias, torch.finfo(torch.float32).min)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)


def test_a_server_bias_in_the_mask_is_added_to_the_scores():
    torch.manual_seed(0)
    module, x = ServerBias().eval(), torch.randn(1, 5, 8)
    plan, error = secure_error(module, (x,))
    (sdpa,) = [n for n in plan.graph.nodes if n.op == "mpc.sdpa"]
    assert len(sdpa.operands) == 5   # q, k, v, the public keep mask, the bias's shares
    assert error < 1e-3


class PublicDivisor(torch.nn.Module):
    """DeBERTa's scores divided by a public 0-d tensor."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.proj(x) / torch.sqrt(torch.tensor(4 * 3, dtype=torch.float)) / torch.arange(1.0, 5.0)


def test_division_by_public_tensors():
    torch.manual_seed(0)
    module, x = PublicDivisor().eval(), torch.randn(1, 3, 4)
    assert secure_error(module, (x,))[1] < 1e-3


class HugeConstant(torch.nn.Module):
    """finfo.min used as a number (not as a mask before a softmax)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, x):
        h = self.proj(x)
        return torch.where(torch.arange(4) > 1, h, torch.tensor(torch.finfo(torch.float32).min))


def test_constants_fixed_point_cannot_hold_are_refused_at_compile_time():
    from mpcc.const_check import ConstantRangeError
    with pytest.raises(ConstantRangeError, match=r"constant %\w+ \(magnitude 3.4e\+38\).*below 2\^46"):
        mpcc.compile(HugeConstant().eval(), (torch.randn(1, 2, 4),))


class CappedScores(torch.nn.Module):
    """Gemma-2's attention: the scores capped by a tanh, then a causal where() with finfo.min."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).split(8, -1)
        scores = torch.tanh(q @ k.transpose(-1, -2) / 20.0) * 20.0
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        scores = torch.where(causal, scores, torch.finfo(torch.float32).min)
        return torch.softmax(scores, -1) @ v


def test_a_softmax_behind_masks_with_no_attention_around_it_excludes():
    torch.manual_seed(0)
    module, x = CappedScores().eval(), torch.randn(1, 5, 8)
    plan, error = secure_error(module, (x,))
    assert [n.op for n in plan.graph.nodes].count("mpc.softmax_masked") == 1
    assert error < 2e-2   # the tanh (3e-3) times the cap


def test_bart_makes_its_decoder_inputs_from_the_input_ids():
    """No decoder_input_ids: BART's shift_tokens_right (new_zeros, slice copy_, fill_, masked_fill_)
    runs on the client's ids, made functional, as the client's own plaintext."""
    model, inputs = build("bart")
    assert secure_error(model, {"input_ids": inputs["input_ids"]})[1] <= 1e-2


class _Scores(torch.nn.Module):
    """Attention scores of x; ``forward`` applies the masks under test."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(8, 24)

    def parts(self, x):
        q, k, v = self.qkv(x).split(8, -1)
        return q @ k.transpose(-1, -2), v


class MaskThenScale(_Scores):
    def forward(self, x):   # -1e4 is an exclusion where it is added, -1 after the scaling: not excluded
        scores, v = self.parts(x)
        mask = torch.zeros(x.shape[1], x.shape[1])
        mask[:, 0] = -1e4
        return torch.softmax((scores + mask) * 1e-4, -1) @ v


class EmptyRow(_Scores):
    def forward(self, x):   # row 0 keeps no key: eager softmax gives it uniform weights
        scores, v = self.parts(x)
        keep = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
        keep[:, 0] = False
        return torch.softmax(torch.where(keep, scores, torch.finfo(torch.float32).min), -1) @ v


class ServerBoolMask(_Scores):
    def __init__(self):
        super().__init__()
        self.register_buffer("keep", torch.ones(5, 5, dtype=torch.bool).tril())   # a weight: the server's

    def forward(self, x):
        q, k, v = (t.unsqueeze(1) for t in self.qkv(x).split(8, -1))
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.keep)


def test_mask_rewrites_keep_the_function_or_are_refused():
    """Found by an adversarial review: each used to give a silently wrong result."""
    from mpcc.const_check import ConstantRangeError
    from mpcc.passes import LoweringError
    torch.manual_seed(0)
    x = torch.randn(1, 5, 8)
    module = MaskThenScale().eval()
    assert secure_error(module, (x,))[1] < 1e-3
    with pytest.raises(ConstantRangeError):   # not fused (a row would be empty): finfo.min is met as a number
        mpcc.compile(EmptyRow().eval(), (x,))
    with pytest.raises(LoweringError, match="keep mask must be public"):
        mpcc.compile(ServerBoolMask().eval(), (x,))


def test_the_server_keeps_no_setup_message_after_a_run():
    """D = W - B is dropped once sent (BERT-base: 880 MB), not held in the run's pending messages."""
    model, inputs = build("gpt2")
    session = mpcc.Session(mpcc.compile(model, inputs), model.state_dict(), progress=False)
    session.run(inputs)
    assert session.states[0].pending_setup == {} and session.states[1].pending_setup == {}


class ServerScaledRMS(torch.nn.Module):
    """An RMSNorm whose scale is a server *input* (changes per inference): not fused with it."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x, g):
        h = self.proj(x)
        return g * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))


def test_rms_norm_fuses_only_a_weight_fixed_for_the_deployment():
    torch.manual_seed(0)
    module = ServerScaledRMS().eval()
    inputs = {"x": torch.randn(1, 3, 8), "g": torch.randn(8)}
    plan, error = secure_error(module, inputs, owners={"g": "server"})
    (norm,) = [n for n in plan.graph.nodes if n.op == "mpc.rms_norm"]
    assert norm.attrs.get("weight", "operand") is None   # the server input stays a product after it
    assert error < 1e-2
