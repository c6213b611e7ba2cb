"""The ``secformer`` preset (Luo et al., ACL Findings 2024): 2Quad softmax
with Goldschmidt division, LayerNorm with Goldschmidt rsqrt, and GeLU with
erf from a 7-term sine series (the published coefficients), iteration counts
as published (``GOLDSCHMIDT_DIV_STEPS``, ``GOLDSCHMIDT_RSQRT_STEPS``). The
2Quad part changes the function (SecFormer distils for it); the rest
approximates the exact functions (GeLU within 0.06)."""
from .approximate import register_preset

register_preset("secformer", {"softmax": "2quad_goldschmidt", "gelu": "secformer", "layer_norm": "goldschmidt"},
                "SecFormer: 2Quad softmax with Goldschmidt division, Goldschmidt LayerNorm, sine-series GeLU")
