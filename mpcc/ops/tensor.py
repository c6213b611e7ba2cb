"""Tensor ops imported from ATen: shapes, elementwise math, comparisons,
reductions and creation. Param names follow the ATen schema so the frontend
can bind them generically. Reals run in float64 in the plaintext reference.
"""
from __future__ import annotations

import torch

from .base import KIND_DTYPES, define

__all__ = ["dtype_arg", "patches"]


def dtype_arg(kind):
    """An IR dtype attribute (``real``/``int``/``bool`` or None) as a torch dtype."""
    return None if kind is None else KIND_DTYPES[kind]


def patches(x: torch.Tensor, kernel_size, stride, padding, dilation) -> torch.Tensor:
    """F.unfold(x).transpose(1, 2) for any dtype (int64 shares too): the rows a convolution's
    weight, reshaped to (out, C*kh*kw), multiplies. Stride equal to kernel is a pure reshaping."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (tuple(v) for v in (kernel_size, stride, padding, dilation))
    x = torch.nn.functional.pad(x, (pw, pw, ph, ph)) if ph or pw else x
    windows = x.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]
    n, c, rows, cols = windows.shape[:4]
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(n, rows * cols, c * kh * kw)


def _op(name, params, reference, doc, family="elementwise", **extra):
    return define(name, params, reference, doc, family, **extra)


# --- sources: where values come from
_op("input", (), None, "a model input, owned by the party in attr owner (client unless declared)", "source", source=True)
_op("param", ("key",), None, "a server weight, named by its state_dict key", "source", source=True)
_op("const", ("value",), lambda value: value, "a public constant tensor", "source")

# --- shapes (local on shares: they only move elements)
_op("view", ("self", "size"), lambda x, size: x.reshape(size), "reshape", "shape")
_op("reshape", ("self", "shape"), lambda x, shape: x.reshape(shape), "reshape", "shape")
_op("permute", ("self", "dims"), lambda x, dims: x.permute(dims), "permute axes", "shape")
_op("transpose", ("self", "dim0", "dim1"), lambda x, a, b: x.transpose(a, b), "swap two axes", "shape")
_op("t", ("self",), lambda x: x.t(), "transpose a matrix", "shape")
_op("unsqueeze", ("self", "dim"), lambda x, dim: x.unsqueeze(dim), "insert an axis of size 1", "shape")
_op("squeeze", ("self", "dim"), lambda x, dim=None: x.squeeze() if dim is None else x.squeeze(dim),
    "drop axes of size 1", "shape")
_op("expand", ("self", "size", "implicit"), lambda x, size, implicit=False: x.expand(size), "broadcast", "shape")
_op("slice", ("self", "dim", "start", "end", "step"),
    lambda x, dim=0, start=None, end=None, step=1: torch.ops.aten.slice.Tensor(x, dim, start, end, step),
    "take a strided range along one axis", "shape")
_op("select", ("self", "dim", "index"), lambda x, dim, index: x.select(dim, index), "take one index (public) of an axis", "shape")
_op("cat", ("tensors", "dim"), lambda tensors, dim=0: torch.cat(tensors, dim), "concatenate", "shape")
_op("flatten", ("self", "start_dim", "end_dim"), lambda x, s=0, e=-1: x.flatten(s, e), "flatten axes", "shape")
_op("repeat", ("self", "repeats"), lambda x, repeats: x.repeat(repeats), "tile", "shape")
_op("patches", ("self", "kernel_size", "stride", "padding", "dilation"), lambda x, k, s, p, d: patches(x, k, s, p, d),
    "the (N, positions, C*kh*kw) patches a 2-D convolution reads (zero padded); moves and copies elements only",
    "shape")
_op("stack", ("tensors", "dim"), lambda tensors, dim=0: torch.stack(tensors, dim), "stack along a new axis", "shape")
_op("repeat_interleave", ("self", "repeats", "dim", "output_size"),
    lambda x, repeats, dim=None, output_size=None: torch.repeat_interleave(x, repeats, dim), "repeat each element",
    "shape")
_op("pad", ("self", "pad", "mode", "value"),
    lambda x, pad, mode="constant", value=None: torch.nn.functional.pad(x, pad, mode, value),
    "pad the last axes (on shares: constant zeros only)", "shape")
# the functional forms of in-place writes (``x[..., -1] = v``, ``copy_``): they only move elements
_op("copy", ("self", "src"), lambda x, src: src.to(x.dtype).expand(x.shape).clone(),
    "src in x's shape (the functional copy_)", "shape")
_op("fill", ("self", "value"), lambda x, value: torch.as_tensor(value).to(x.dtype).expand(x.shape).clone(),
    "x's shape filled with one value (the functional fill_; plaintext only)")
_op("select_scatter", ("self", "src", "dim", "index"),
    lambda x, src, dim, index: torch.select_scatter(x, src.to(x.dtype), dim, index), "x with one index replaced",
    "shape")
_op("slice_scatter", ("self", "src", "dim", "start", "end", "step"),
    lambda x, src, dim=0, start=None, end=None, step=1: torch.slice_scatter(x, src.to(x.dtype), dim, start, end, step),
    "x with a strided range replaced", "shape")
_op("cast", ("self", "dtype"), lambda x, dtype: x.to(dtype_arg(dtype)), "change element kind", "shape")
_op("index", ("self", "indices"), lambda x, indices: torch.ops.aten.index.Tensor(x, list(indices)),
    "advanced indexing (indices must be public; None keeps an axis whole, as in ATen)",
    "shape", index_params=("indices",))
_op("gather", ("self", "dim", "index", "sparse_grad"), lambda x, dim, index, sparse_grad=False: torch.gather(x, dim, index),
    "gather along an axis (index must be public)", "shape", index_params=("index",))
_op("index_select", ("self", "dim", "index"), lambda x, dim, index: torch.index_select(x, dim, index),
    "select rows (index must be public)", "shape", index_params=("index",))

# --- elementwise arithmetic
_op("add", ("self", "other", "alpha"), lambda x, y, alpha=1: torch.add(x, y, alpha=alpha), "x + alpha*y")
_op("sub", ("self", "other", "alpha"), lambda x, y, alpha=1: torch.sub(x, y, alpha=alpha), "x - alpha*y")
_op("rsub", ("self", "other", "alpha"), lambda x, y, alpha=1: torch.rsub(x, y, alpha=alpha), "y - alpha*x")
_op("mul", ("self", "other"), torch.mul, "x * y")
_op("div", ("self", "other", "rounding_mode"), lambda x, y, rounding_mode=None: torch.div(x, y, rounding_mode=rounding_mode), "x / y")
_op("neg", ("self",), torch.neg, "-x")
_op("pow", ("self", "exponent"), torch.pow, "x ** exponent")
_op("sqrt", ("self",), torch.sqrt, "square root")
_op("rsqrt", ("self",), torch.rsqrt, "1 / sqrt(x)")
_op("exp", ("self",), torch.exp, "e ** x")
_op("log", ("self",), torch.log, "natural log")
_op("tanh", ("self",), torch.tanh, "hyperbolic tangent")
_op("sigmoid", ("self",), torch.sigmoid, "logistic function")
_op("erf", ("self",), torch.erf, "error function")
_op("abs", ("self",), torch.abs, "|x|")
_op("reciprocal", ("self",), torch.reciprocal, "1 / x")
for _name in ("cos", "sin", "sign", "ceil", "floor", "round", "trunc", "log1p", "log2", "frac"):
    _op(_name, ("self",), getattr(torch, _name), f"elementwise {_name} (public values only: folded, no protocol)")
_op("relu", ("self",), torch.relu, "max(x, 0)")
_op("maximum", ("self", "other"), torch.maximum, "elementwise max")
_op("minimum", ("self", "other"), torch.minimum, "elementwise min")
_op("clamp", ("self", "min", "max"), lambda x, lo=None, hi=None: torch.clamp(x, lo, hi), "clip to [min, max]")
_op("where", ("condition", "self", "other"), torch.where, "select by a boolean mask")
_op("masked_fill", ("self", "mask", "value"), lambda x, mask, value: x.masked_fill(mask, value), "x where not mask, else value")

# --- comparisons and logic (bool results)
for _name in ("eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "bitwise_and", "bitwise_or"):
    _op(_name, ("self", "other"), getattr(torch, _name), f"elementwise {_name}", "compare")
_op("logical_not", ("self",), torch.logical_not, "elementwise not", "compare")
_op("bitwise_not", ("self",), torch.bitwise_not, "elementwise bitwise not", "compare")

# --- reductions
_op("sum", ("self", "dim", "keepdim", "dtype"),
    lambda x, dim=None, keepdim=False, dtype=None: torch.sum(x, dim=dim, keepdim=keepdim, dtype=dtype_arg(dtype)),
    "sum over axes", "reduce")
_op("mean", ("self", "dim", "keepdim", "dtype"),
    lambda x, dim=None, keepdim=False, dtype=None: torch.mean(x, dim=dim, keepdim=keepdim, dtype=dtype_arg(dtype)),
    "mean over axes", "reduce")
_op("amax", ("self", "dim", "keepdim"), lambda x, dim=(), keepdim=False: torch.amax(x, dim, keepdim), "max over axes", "reduce")
_op("amin", ("self", "dim", "keepdim"), lambda x, dim=(), keepdim=False: torch.amin(x, dim, keepdim), "min over axes", "reduce")
_op("argmax", ("self", "dim", "keepdim"), lambda x, dim=None, keepdim=False: torch.argmax(x, dim, keepdim),
    "index of the max", "reduce")
_op("cumsum", ("self", "dim", "dtype"), lambda x, dim, dtype=None: torch.cumsum(x, dim, dtype=dtype_arg(dtype)),
    "running sum", "reduce")
_op("diff", ("self", "n", "dim", "prepend", "append"),
    lambda x, n=1, dim=-1, prepend=None, append=None: torch.diff(x, n, dim, prepend, append), "differences", "reduce")

# --- creation (always public)
_op("arange", ("start", "end", "step", "dtype"),
    lambda start=0, end=None, step=1, dtype=None: torch.arange(start, end, step, dtype=dtype_arg(dtype)), "a range", "create")
_op("full", ("size", "fill_value", "dtype"), lambda size, fill, dtype=None: torch.full(size, fill, dtype=dtype_arg(dtype)),
    "a filled tensor", "create")
_op("full_like", ("self", "fill_value", "dtype"),
    lambda x, fill, dtype=None: torch.full_like(x, fill, dtype=dtype_arg(dtype)), "filled like x (uses only x's shape)", "create")
_op("new_full", ("self", "size", "fill_value", "dtype"),
    lambda x, size, fill, dtype=None: x.new_full(size, fill, dtype=dtype_arg(dtype) or x.dtype), "filled (uses only x's kind)", "create")
_op("tril", ("self", "diagonal"), lambda x, diagonal=0: torch.tril(x, diagonal), "lower triangle", "shape")
_op("triu", ("self", "diagonal"), lambda x, diagonal=0: torch.triu(x, diagonal), "upper triangle", "shape")
