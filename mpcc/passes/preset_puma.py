"""The ``puma`` preset (Dong et al. 2023, on SecretFlow-SPU): GeLU by PUMA's two
piecewise polynomials (a cubic on [-4, -1.95), a degree-6 one on [-1.95, 3],
0 and x outside; within 0.02 of GeLU) and the softmax with the max shift and
e^x cut to 0 below -14; LayerNorm stays exact."""
from .approximate import register_preset

register_preset("puma", {"softmax": "puma", "gelu": "puma"},
                "PUMA: piecewise-polynomial GeLU, max-shifted exp cut at -14")
