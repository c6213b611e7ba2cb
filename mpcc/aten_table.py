"""Which ATen ops mpcc imports, and into which IR op.

Each entry: ``"name.overload": (ir_op, renames, fixed)``. Arguments are bound
by the ATen schema; ``renames`` maps schema names to IR param names and
``fixed`` supplies IR attributes the overload does not carry.
"""
from __future__ import annotations

__all__ = ["ATEN_TO_IR", "IDENTITY_OPS", "ASSERT_OPS", "CAST_OPS", "DROPPED_ARGS", "MULTI_OUTPUT_OPS", "supported_aten_ops"]

# Ops that only forward their first argument at inference.
IDENTITY_OPS = {
    "alias.default", "clone.default", "contiguous.default", "detach.default", "lift_fresh_copy.default",
    "dropout.default", "feature_dropout.default", "alpha_dropout.default",
}
# Ops with no result that the program keeps only for checking.
ASSERT_OPS = {"_assert_tensor_metadata.default", "_assert_scalar.default", "sym_constrain_range_for_size.default",
              "_assert_async.msg"}
# Conversions: a cast when the element kind changes, otherwise the identity.
CAST_OPS = {"to.dtype", "to.dtype_layout", "_to_copy.default", "to.device", "to.prim_dtype", "type_as.default"}
MULTI_OUTPUT_OPS = {"split.Tensor", "split_with_sizes.default", "unbind.int", "chunk.default"}
# Schema arguments that do not change values on CPU at inference.
DROPPED_ARGS = {"layout", "device", "pin_memory", "memory_format", "non_blocking", "copy", "cudnn_enable", "half_to_float"}

_SAME = {}
ATEN_TO_IR: dict[str, tuple[str, dict, dict]] = {}


def _map(ir_op: str, *overloads: str, renames: dict | None = None, fixed: dict | None = None) -> None:
    for overload in overloads:
        ATEN_TO_IR[overload] = (ir_op, renames or _SAME, fixed or _SAME)


_map("view", "view.default", "_unsafe_view.default")
_map("reshape", "reshape.default")
_map("permute", "permute.default")
_map("transpose", "transpose.int")
_map("t", "t.default")
_map("unsqueeze", "unsqueeze.default")
_map("squeeze", "squeeze.dim", "squeeze.dims")
_map("squeeze", "squeeze.default", fixed={"dim": None})
_map("expand", "expand.default")
_map("slice", "slice.Tensor")
_map("select", "select.int")
_map("cat", "cat.default")
_map("flatten", "flatten.using_ints")
_map("repeat", "repeat.default")
_map("index", "index.Tensor")
_map("gather", "gather.default")
_map("index_select", "index_select.default")
_map("stack", "stack.default")
_map("repeat_interleave", "repeat_interleave.self_int")
_map("pad", "pad.default")
_map("pad", "constant_pad_nd.default", fixed={"mode": "constant"})
_map("fill", "fill.Scalar", "fill.Tensor")
_map("copy", "copy.default")
_map("select_scatter", "select_scatter.default")
_map("slice_scatter", "slice_scatter.default")
_map("tril", "tril.default")
_map("triu", "triu.default")

for _name in ("add", "sub"):
    _map(_name, f"{_name}.Tensor", f"{_name}.Scalar")
_map("rsub", "rsub.Scalar", "rsub.Tensor")
_map("mul", "mul.Tensor", "mul.Scalar")
_map("div", "div.Tensor", "div.Scalar", fixed={"rounding_mode": None})
_map("div", "div.Tensor_mode", "div.Scalar_mode")
_map("pow", "pow.Tensor_Scalar", "pow.Tensor_Tensor")
for _name in ("neg", "sqrt", "rsqrt", "exp", "log", "tanh", "sigmoid", "erf", "abs", "relu", "silu",
              "logical_not", "bitwise_not"):
    _map(_name, f"{_name}.default")
_map("maximum", "maximum.default", "max.other")
_map("minimum", "minimum.default", "min.other")
# math that Hugging Face applies to public values only (rotary tables, position buckets): folded, never run in MPC
for _name in ("cos", "sin", "sign", "ceil", "floor", "round", "trunc", "reciprocal", "log1p", "log2", "frac"):
    _map(_name, f"{_name}.default")
_map("clamp", "clamp.default", "clamp.Tensor")
_map("clamp", "clamp_min.default", fixed={"max": None})
_map("clamp", "clamp_max.default", fixed={"min": None})
_map("where", "where.self", "where.ScalarOther", "where.ScalarSelf", "where.Scalar")
_map("masked_fill", "masked_fill.Scalar", "masked_fill.Tensor")
for _name in ("eq", "ne", "lt", "le", "gt", "ge"):
    _map(_name, f"{_name}.Tensor", f"{_name}.Scalar")
for _name in ("logical_and", "logical_or"):
    _map(_name, f"{_name}.default")
_map("bitwise_and", "__and__.Tensor", "bitwise_and.Tensor", "bitwise_and.Scalar")
_map("bitwise_or", "__or__.Tensor", "bitwise_or.Tensor", "bitwise_or.Scalar")

_map("sum", "sum.dim_IntList")
_map("sum", "sum.default", fixed={"dim": None, "keepdim": False})
_map("mean", "mean.dim")
_map("mean", "mean.default", fixed={"dim": None, "keepdim": False})
_map("amax", "amax.default")
_map("amin", "amin.default")
_map("argmax", "argmax.default")
_map("cumsum", "cumsum.default")
_map("diff", "diff.default")

_map("arange", "arange.default", fixed={"start": 0, "step": 1})
_map("arange", "arange.start", fixed={"step": 1})
_map("arange", "arange.start_step")
_map("full", "full.default")
_map("full", "ones.default", fixed={"fill_value": 1})
_map("full", "zeros.default", fixed={"fill_value": 0})
_map("full", "scalar_tensor.default", renames={"s": "fill_value"}, fixed={"size": []})
_map("full_like", "full_like.default")
_map("full_like", "ones_like.default", fixed={"fill_value": 1})
_map("full_like", "zeros_like.default", fixed={"fill_value": 0})
_map("new_full", "new_full.default")
_map("new_full", "new_ones.default", fixed={"fill_value": 1})
_map("new_full", "new_zeros.default", fixed={"fill_value": 0})

_map("linear", "linear.default")
_map("conv2d", "conv2d.default")
_map("addmm", "addmm.default")
_map("baddbmm", "baddbmm.default")
_map("mm", "mm.default")
_map("bmm", "bmm.default")
_map("matmul", "matmul.default")
_map("softmax", "softmax.int")
_map("softmax", "_softmax.default", fixed={"dtype": None})
_map("log_softmax", "log_softmax.int")
_map("log_softmax", "_log_softmax.default", fixed={"dtype": None})
_map("layer_norm", "layer_norm.default")
_map("gelu", "gelu.default")
_map("embedding", "embedding.default")
_map("one_hot", "one_hot.default")
_map("sdpa", "scaled_dot_product_attention.default", fixed={"softmax": "exact"})


def supported_aten_ops() -> list[str]:
    """Every ATen overload the frontend accepts (for docs and error messages)."""
    return sorted(set(ATEN_TO_IR) | IDENTITY_OPS | ASSERT_OPS | CAST_OPS | MULTI_OUTPUT_OPS)
