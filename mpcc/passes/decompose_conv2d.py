"""A 2-D convolution becomes a linear over its input's patches, so that a secret
image times the server's kernel is one ``linear_server`` (ViT's patch embedding).

    %conv2d = conv2d(%x, %w, %b, stride=[4, 4], ...) : real[1,32,4,4]
      ->  %conv2d_patches = patches(%x, kernel_size=[4, 4], ...) : real[1,16,48]
          %conv2d_kernel = reshape(%w, shape=[32, 48]) : real[32,48] server
          %conv2d_rows = linear(%conv2d_patches, %conv2d_kernel, %b) : real[1,16,32]
          %conv2d_moved = transpose(%conv2d_rows, dim0=1, dim1=2) : real[1,32,16]
          %conv2d = reshape(%conv2d_moved, shape=[1, 32, 4, 4]) : real[1,32,4,4]

The patches only move and copy elements (a pure reshaping when the stride equals
the kernel), so they are local on shares; the kernel's reshape is the server's.
"""
from __future__ import annotations

from ..ir import Graph, IRError, Node, TensorType
from .names import fresh_name
from .registry import register_pass

__all__ = ["decompose_conv2d"]


def _pair(value) -> list[int]:
    return [int(value), int(value)] if isinstance(value, int) else [int(v) for v in value]


def _decomposed(graph: Graph, node: Node, taken: set[str]) -> tuple[Node, ...]:
    x, weight, *bias = node.operands
    attrs = node.attrs
    if attrs.get("groups", 1) != 1:
        raise IRError(f"%{node.name} = conv2d(...) in {node.origin or '<top>'}: grouped convolution "
                      f"(groups={attrs['groups']}) is not supported")
    if isinstance(attrs.get("padding"), str):
        raise IRError(f"%{node.name} = conv2d(...) in {node.origin or '<top>'}: padding={attrs['padding']!r} "
                      "is not supported; give the padding in pixels")
    out_channels, in_channels, kh, kw = graph[weight].type.shape
    batch, _, rows, cols = node.type.shape
    kind, vis, origin = node.type.kind, node.type.vis, node.origin
    width = in_channels * kh * kw

    def named(suffix):
        return fresh_name(f"{node.name}_{suffix}", taken)
    patches = Node(named("patches"), "patches", (x,), {"kernel_size": [kh, kw], "stride": _pair(attrs.get("stride", 1)),
                                                       "padding": _pair(attrs.get("padding", 0)),
                                                       "dilation": _pair(attrs.get("dilation", 1))},
                   TensorType((batch, rows * cols, width), kind, graph[x].type.vis), origin)
    kernel = Node(named("kernel"), "reshape", (weight,), {"shape": [out_channels, width]},
                  TensorType((out_channels, width), kind, graph[weight].type.vis), origin)
    linear = Node(named("rows"), "linear", (patches.name, kernel.name, *bias), {} if bias else {"bias": None},
                  TensorType((batch, rows * cols, out_channels), kind, vis), origin)
    moved = Node(named("moved"), "transpose", (linear.name,), {"dim0": 1, "dim1": 2},
                 TensorType((batch, out_channels, rows * cols), kind, vis), origin)
    result = Node(node.name, "reshape", (moved.name,), {"shape": list(node.type.shape)}, node.type, origin)
    return patches, kernel, linear, moved, result


@register_pass("decompose_conv2d")
def decompose_conv2d(graph: Graph) -> Graph:
    taken = {n.name for n in graph.nodes}
    replacements = {n.name: _decomposed(graph, n, taken) for n in graph.nodes if n.op == "conv2d"}
    return graph.fused((), replacements) if replacements else graph
