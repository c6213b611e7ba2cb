"""The ``exact`` preset: every function as the model has it (GeLU by a
segmented Fourier series within 1e-3, softmax with the max shift)."""
from .approximate import register_preset

register_preset("exact", {}, "the model's own functions (GeLU within 1e-3)")
