"""Fixed-point emulation: the secure run's numerics in one thread."""
import pytest
import torch

import mpcc
from mpcc.passes.approximate import PRESETS
from mpcc.runtime.session import RunError
from tests.conftest import token_ids

# Both runs carry the same protocols; they differ only in the truncations' random 1-ulp
# borrows (each a -1 ulp with some probability), which reach the outputs through a
# layer's products: at f = 16, a few hundred ulps at most on a tiny BERT.
TRUNCATION_NOISE = 2e-3


@pytest.mark.parametrize("approx", sorted(PRESETS))
def test_emulation_matches_the_secure_run(tiny_bert, approx):
    inputs = {"input_ids": token_ids(6, 120)}
    plan = mpcc.compile(tiny_bert, inputs, approx=approx)
    weights = tiny_bert.state_dict()
    secure, _ = mpcc.run(plan, inputs, weights, progress=False)
    emulator = mpcc.Emulator(plan, weights, seed=1)
    for _ in range(2):   # the weights' setup happens once; later inputs reuse it
        emulated = emulator.run(inputs)
        assert (emulated[0] - secure[0]).abs().max() < TRUNCATION_NOISE
    plaintext = mpcc.interpret(plan, inputs, weights)
    assert (emulated[0] - plaintext[0]).abs().max() < 1e-2


@pytest.mark.parametrize("approx", ["exact", "mpcformer"])
def test_emulation_of_a_layer_on_real_client_inputs(approx):
    """Eager attention fused into sdpa and the client's input masked once (a wire whose
    server share is 0): the emulator's parties hold what the real ones do."""
    from mpcc.bench import bert_layer
    layer = bert_layer(hidden=32, heads=4, ffn=64)
    inputs = {"hidden_states": torch.randn(1, 8, 32, generator=torch.Generator().manual_seed(1))}
    plan = mpcc.compile(layer, inputs, approx=approx)
    assert any(n.attrs.get("masked") for n in plan.graph.nodes if n.op == "mpc.share")
    secure, _ = mpcc.run(plan, inputs, layer.state_dict(), progress=False)
    emulated = mpcc.emulate(plan, inputs, layer.state_dict())
    assert (emulated[0] - secure[0]).abs().max() < TRUNCATION_NOISE


def test_emulation_follows_the_fixed_point_arithmetic_not_the_plaintext():
    """A product below one ulp vanishes in fixed point: emulation shows it, as a secure run would."""
    class Tiny(torch.nn.Module):
        def forward(self, x):
            return x * x
    x = torch.tensor([[2.0 ** -9, 3.0]])
    plan = mpcc.compile(Tiny(), (x,))
    (emulated,) = mpcc.emulate(plan, (x,), {})
    (secure,), _ = mpcc.run(plan, (x,), {}, progress=False)
    assert emulated[0, 0].abs() <= 2.0 ** -16 and secure[0, 0].abs() <= 2.0 ** -16   # 2^-18 is below one ulp
    assert torch.allclose(emulated[0, 1], torch.tensor(9.0, dtype=emulated.dtype), atol=1e-4)


def test_emulation_refuses_bad_inputs_and_weights(tiny_bert):
    inputs = {"input_ids": token_ids(6, 120)}
    plan = mpcc.compile(tiny_bert, inputs)
    with pytest.raises(RunError, match="input"):
        mpcc.emulate(plan, {"wrong": inputs["input_ids"]}, tiny_bert.state_dict())
    bad = dict(tiny_bert.state_dict())
    key = next(k for k in bad if k.endswith("intermediate.dense.weight"))
    bad[key] = bad[key] * float("nan")
    with pytest.raises(RunError, match="NaN|nan|finite"):
        mpcc.emulate(plan, inputs, bad)


class _ServerScaled(torch.nn.Module):
    """softmax(x * w) with the server's w = 1: x becomes shared, so softmax runs as its protocol."""

    def __init__(self, width):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return torch.softmax(x * self.weight, -1)


def test_emulated_truncations_are_as_noisy_as_secure_ones():
    """A truncation opens the high halves of each party's share, so its error depends on
    each share: the emulator must hand party 1 a uniform share of every ring mask, as a
    dealer does. With party 1 holding zero, every truncation was half an ulp high and a
    softmax over 128 scores came out 9e-4 off, against 1-2e-4 in a secure run."""
    scores = torch.randn(16, 128, generator=torch.Generator().manual_seed(0)) * 3
    module = _ServerScaled(128)
    plan = mpcc.compile(module, (scores,))
    expected = torch.softmax(scores.double(), -1)
    secure = mpcc.run(plan, (scores,), module.state_dict(), progress=False)[0][0]
    for seed in range(2):
        emulated = mpcc.emulate(plan, (scores,), module.state_dict(), seed=seed)[0]
        assert (emulated - expected).abs().max() < 4e-4
        assert abs(float((emulated - expected).mean())) < 2e-6   # no drift: the errors centre on 0
    assert (secure - expected).abs().max() < 4e-4
