"""The ``power`` preset: no comparison anywhere, so the plan is a polynomial
circuit with a multiplicative depth (``mpcc.depth``). Power-softmax
(1 + (x - mean)/4)^4 / sum with scaled Newton division, the minimax quartic
GeLU on [-4, 4], LayerNorm with scaled Newton rsqrt on var + eps in
[2^-11, 2^8) (``mpcc/ops/power.py``). Power-softmax and the quartic change the
function (they need distillation, as MPCFormer's do); LayerNorm is the
same function on its domain."""
from .approximate import register_preset

register_preset("power", {"softmax": "power", "gelu": "quartic", "layer_norm": "newton"},
                "comparison-free: power-softmax, quartic GeLU, scaled-Newton LayerNorm")
