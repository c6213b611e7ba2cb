"""High-level neural-network ops: the ones the approximation passes target
and the lowering turns into MPC protocols.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import define
from .attention import attention_reference, masked_softmax_reference
from .tensor import dtype_arg

__all__ = []


def _op(name, params, reference, doc, family="nn", **extra):
    return define(name, params, reference, doc, family, **extra)


_op("linear", ("input", "weight", "bias"), F.linear, "x @ W.T + b (W as nn.Linear stores it)", "matmul")
_op("conv2d", ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    lambda x, w, b=None, stride=1, padding=0, dilation=1, groups=1: F.conv2d(x, w, b, stride, padding, dilation, groups),
    "2-D convolution (a linear over patches: see decompose_conv2d)", "matmul")
_op("addmm", ("self", "mat1", "mat2", "beta", "alpha"),
    lambda b, x, w, beta=1, alpha=1: torch.addmm(b, x, w, beta=beta, alpha=alpha), "beta*b + alpha*(x @ w)", "matmul")
_op("baddbmm", ("self", "batch1", "batch2", "beta", "alpha"),
    lambda b, x, y, beta=1, alpha=1: torch.baddbmm(b, x, y, beta=beta, alpha=alpha), "beta*b + alpha*(x @ y)", "matmul")
_op("mm", ("self", "mat2"), torch.mm, "matrix product", "matmul")
_op("bmm", ("self", "mat2"), torch.bmm, "batched matrix product", "matmul")
_op("matmul", ("self", "other"), torch.matmul, "broadcasting matrix product", "matmul")
_op("softmax", ("self", "dim", "dtype"), lambda x, dim, dtype=None: torch.softmax(x, dim, dtype=dtype_arg(dtype)),
    "exp(x) / sum exp(x) along dim")
_op("masked_softmax", ("self", "mask", "dim", "softmax"), masked_softmax_reference,
    "softmax(x + mask) over the last axis, mask entries at or below -1e4 excluded (fuse_masked_attention)")
_op("log_softmax", ("self", "dim", "dtype"), lambda x, dim, dtype=None: torch.log_softmax(x, dim, dtype=dtype_arg(dtype)),
    "x - log sum exp(x) along dim")
_op("layer_norm", ("input", "normalized_shape", "weight", "bias", "eps"),
    lambda x, shape, w=None, b=None, eps=1e-5: F.layer_norm(x, shape, w, b, eps), "normalise the last axes, then scale and shift")
_op("gelu", ("self", "approximate"), lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "x * Phi(x) (or its tanh form)")
_op("silu", ("self",), F.silu, "x * sigmoid(x)")
_op("embedding", ("weight", "indices", "padding_idx", "scale_grad_by_freq", "sparse"),
    lambda w, idx, padding_idx=-1, scale=False, sparse=False: w[idx],
    "rows of a table (indices must be public, or be replaced by a one-hot product)", index_params=("indices",))
_op("one_hot", ("self", "num_classes"), lambda idx, num_classes: F.one_hot(idx.long(), num_classes).to(torch.float64),
    "one-hot rows of the owner's indices (a local op of the index owner)", index_params=("self",))
_op("sdpa", ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa", "softmax", "bias"),
    attention_reference, "softmax(q k^T * scale + mask + bias) v, all heads at once (softmax: the variant, see "
    "approx; bias: an additive term that is not public)", defaults={"bias": None})
