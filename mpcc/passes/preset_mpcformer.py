"""The ``mpcformer`` preset (Li et al., ICLR 2023): 2Quad softmax
(x + 5)^2 / sum (x + 5)^2 and Quad GeLU 0.125 x^2 + 0.25 x + 0.5; LayerNorm
stays exact. It changes the function: MPCFormer recovers accuracy by
distillation, without which a pretrained model's outputs drift."""
from .approximate import register_preset

register_preset("mpcformer", {"softmax": "2quad", "gelu": "quad"}, "MPCFormer: 2Quad softmax, Quad GeLU")
