"""Attention written out (eager Hugging Face code: softmax(q k^T / sqrt(d)) v as
two matmuls and a softmax) becomes one ``mpc.sdpa``, the op that HF's sdpa
attention traces to, so it gets the same protocol: 16-bit operand openings,
the division deferred past v, 2Quad's coarse scores.

    %s = mpc.matmul(%q, %k_t, shift=3)  %p = mpc.softmax_2quad(%s, dim=-1)  %o = mpc.matmul(%p, %v)
      ->  %o_key = transpose(%k_t, dim0=-2, dim1=-1)
          %o = mpc.sdpa(%q, %o_key, %v, scale=0.125, softmax='2quad', ...)

A scaling that is not a power of two (``mpc.mul_scalar`` after the matmul)
joins too. Only the chain itself is fused: scores or probabilities read
elsewhere, a mask added in between, or a softmax over another axis keep the
ops as they are.
"""
from __future__ import annotations

from dataclasses import replace

from ..ir import Graph, Node, TensorType
from ..ops.attention import SOFTMAX_VARIANTS
from .registry import register_pass

__all__ = ["fuse_eager_attention"]


def _softmax_ops() -> dict[str, str]:
    """mpc op -> the softmax variant it runs (``mpc.softmax`` is the exact one)."""
    return {("mpc.softmax" if name == "exact" else f"mpc.softmax_{name}"): name for name in SOFTMAX_VARIANTS}



@register_pass("fuse_eager_attention")
def fuse_eager_attention(graph: Graph) -> Graph:
    users = graph.users()
    variants = _softmax_ops()
    fused: dict[str, tuple[Node, ...]] = {}   # the output matmul's name -> (q k^T matmul, [scaling,] softmax)
    for scores in graph.nodes:
        if scores.op != "mpc.matmul" or len(scores.type.shape) < 2:
            continue
        scaling = graph.sole_reader(scores.name, users)
        if scaling is not None and scaling.op == "mpc.mul_scalar" and not scores.attrs.get("shift") \
                and isinstance(scaling.attrs.get("value"), (int, float)) and scaling.attrs["value"] > 0:
            softmax = graph.sole_reader(scaling.name, users)   # a scale that is not a power of two
            chain: tuple[Node, ...] = (scores, scaling)
        else:
            softmax, chain = scaling, (scores,)
        if softmax is None or softmax.op not in variants or softmax.operands[0] != chain[-1].name \
                or softmax.attrs.get("dim") not in (-1, len(softmax.type.shape) - 1):
            continue
        out = graph.sole_reader(softmax.name, users)
        if out is None or out.op != "mpc.matmul" or out.operands[0] != softmax.name or out.attrs.get("shift", 0) \
                or softmax.name in out.operands[1:]:
            continue
        fused[out.name] = chain + (softmax,)
    gone = {node.name for chain in fused.values() for node in chain}
    return graph.fused(gone, {name: _as_sdpa(graph, graph[name], chain, variants[chain[-1].op])
                              for name, chain in fused.items()})


def _as_sdpa(graph: Graph, out: Node, chain: tuple[Node, ...], variant: str) -> tuple[Node, Node]:
    """The key (k^T transposed back) and the ``mpc.sdpa`` that stands for the chain ending at ``out``."""
    scores, *scaling, _ = chain
    scale = scaling[0].attrs["value"] if scaling else 2.0 ** -scores.attrs.get("shift", 0)
    query, key_t = scores.operands
    key_type = graph[key_t].type
    key_shape = key_type.shape[:-2] + (key_type.shape[-1], key_type.shape[-2])
    key = Node(f"{out.name}_key", "transpose", (key_t,), {"dim0": -2, "dim1": -1},
               TensorType(key_shape, key_type.kind, key_type.vis), out.origin)
    return key, replace(out, op="mpc.sdpa", operands=(query, key.name, out.operands[1]),
                        attrs={"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": float(scale),
                               "enable_gqa": False, "softmax": variant})
