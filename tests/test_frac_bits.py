"""Every fixed-point precision a plan accepts gives right answers: the protocols'
internal scales (3f-bit products, the guesses' slopes) adapt to f, or f is refused."""
import pytest
import torch

import mpcc
from mpcc.ops import attention, layer_norm as ln, nonlinear
from mpcc.plan import FRAC_BITS_RANGE, PlanFormatError
from mpcc.runtime.harness import run_protocol

CASES = {
    "softmax": (lambda ctx, a: attention.softmax_masked(ctx, a, None), lambda v: torch.softmax(v, -1), 1),
    "2quad": (lambda ctx, a: attention.softmax_2quad(ctx, a, None), lambda v: attention._quad_reference(v, None), 15),
    "layer_norm": (lambda ctx, a: ln.layer_norm(ctx, a, None, None, [32], 1e-5),
                   lambda v: torch.nn.functional.layer_norm(v, [32], eps=1e-5), 1),
    "gelu": (lambda ctx, a: nonlinear.gelu(ctx, a), torch.nn.functional.gelu, 1),
}


@pytest.mark.parametrize("frac_bits", [12, 16, FRAC_BITS_RANGE[1]])
@pytest.mark.parametrize("name", sorted(CASES))
def test_results_hold_at_every_accepted_precision(name, frac_bits):
    protocol, reference, lowest = CASES[name]
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(frac_bits)) * 3
    if frac_bits < lowest:   # 2Quad's division needs s = 2^-m exact at f for sums up to 2^16
        with pytest.raises(ValueError, match="past 2\\^\\(f\\+1\\)"):
            run_protocol(protocol, x, frac_bits=frac_bits)
        return
    run = run_protocol(protocol, x, frac_bits=frac_bits)
    error = float((run.decoded - reference(x.double())).abs().max())
    assert error < 300 * 2.0 ** -frac_bits + 1e-5, f"{name} at f = {frac_bits}: error {error:.2e}"


def test_a_precision_past_the_range_is_refused_at_compile_time():
    with pytest.raises(PlanFormatError, match=r"frac_bits must be an integer in \[1, 20\]"):
        mpcc.compile(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), frac_bits=FRAC_BITS_RANGE[1] + 1)
