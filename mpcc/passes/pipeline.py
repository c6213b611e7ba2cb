"""The compiler's pass pipeline: an ordered list of pass names, run with a
lint after each so a broken pass is named at once.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..ir import Graph
from ..verify import LintError, lint
from .registry import get_pass

__all__ = ["DEFAULT_PIPELINE", "SECURE_PIPELINE", "run_pipeline", "PassError", "secure_pipeline"]

DEFAULT_PIPELINE = (
    "infer_visibility",          # who sees what
    "fold_public",               # masks, positions, shape arithmetic become constants
    "eliminate_dead_code",       # drop what the folding left unused
    "client_one_hot_embedding",  # private token ids: local one-hot times the table
    "check_no_secret_index",     # nothing reads a secret as an index
)
# What `mpcc.compile` runs (``secure_pipeline``): the analysis pipeline, fusions, the approximation
# preset's substitutes, then lowering to MPC ops.
SECURE_PIPELINE = DEFAULT_PIPELINE + (
    "decompose_conv2d",          # a convolution: a linear over its input's patches
    "fuse_masked_attention",     # eager attention with masks -> sdpa whose mask excludes (no finfo.min numbers)
    "fuse_rms_norm",             # RMSNorm written out -> one rms_norm (LayerNorm's protocol, no mean)
    "fuse_tanh_gelu",            # GPT-2's written-out GeLU becomes one gelu
    "approximate",               # the preset's substitutes (``secure_pipeline`` fills in its settings)
    "fuse_sibling_linears",      # query, key and value: one linear, its input sent once
    "lower_to_mpc",              # every shared value's op gets its protocol
    "fuse_scaled_matmul",        # q k^T / 2^j: the scaling joins the product's truncation
    "fuse_activation_linear",    # Quad GeLU -> linear: one truncation for both
    "fuse_eager_attention",      # matmul, softmax, matmul -> sdpa (its protocol defers the division)
    "mask_client_inputs",        # a client's input that linears read: masked once, not once per linear
)


def secure_pipeline(approx="exact") -> tuple[str, ...]:
    """The pipeline ``mpcc.compile`` runs for ``approx`` (a preset name or a dict per op family)."""
    from .approximate import approximate_step
    step = approximate_step(approx)
    return tuple(step if name == "approximate" else name for name in SECURE_PIPELINE)


class PassError(RuntimeError):
    """A pass failed or left a broken graph; names it and the passes before it."""


def run_pipeline(graph: Graph, names: Sequence[str] = DEFAULT_PIPELINE, *, check: bool = True,
                 after: Callable[[str, Graph], None] | None = None) -> Graph:
    """Run the named passes in order; ``after(name, graph)`` sees each result."""
    passes = [(name, get_pass(name)) for name in names]  # unknown names fail before any work
    for position, (name, function) in enumerate(passes):
        before = ", ".join(names[:position]) or "none"
        try:
            graph = function(graph)
            if check:
                lint(graph)
        except LintError as error:
            raise PassError(f"pass {name} (after: {before}) left an invalid graph: {error}") from error
        if after is not None:
            after(name, graph)
    return graph
