"""Eager attention with its masks written out becomes one ``sdpa`` with one public
additive mask, before lowering: the masks' ``finfo.min`` and ``-inf`` entries
then exclude scores (the softmax skips them) instead of being encoded as numbers
fixed point cannot hold (GPT-Neo, eager GPT-2-style code).

    %s = matmul(%q, %k_t)  %w = where(%causal, %s, %min)  %a = add(%w, %pad)
    %p = softmax(%a, dim=-1)  %o = matmul(%p, %v)
      ->  %o_key = transpose(%k_t, dim0=-2, dim1=-1)
          %o_mask = const(value=<where(causal, 0, -inf) + pad>)
          %o = sdpa(%q, %o_key, %v, %o_mask, scale=1.0)

A softmax behind such masks with no attention around it (Gemma-2 caps its scores with a
tanh first) becomes one ``masked_softmax`` with the same kind of mask.

Leaving an entry out is exact when the kept scores lie far above -1e4, as they do inside
the softmax protocols' domain for real models (scores of order 10; finfo.min fills lie
far below any encodable score). A softmax whose scores an op before the chain may already
have pushed that low (a mask this pass did not take, before a scaling) is left as it is.

A replacement ``where(C, s, E)`` or ``masked_fill(s, C, E)`` joins only when every
E is an exclusion (at most -1e4, as ``attention_mask`` reads additive masks);
masks must be compile-time constants; scalings by public positive scalars (``mul``,
``div``) anywhere in the chain join as sdpa's ``scale`` (a mask added before one is
scaled with the scores).
"""
from __future__ import annotations

import torch

from ..ir import Graph, Node, TensorType
from ..ops.attention import EXCLUDED   # what ``attention_mask`` reads as an exclusion
from .names import fresh_name
from .registry import register_pass

__all__ = ["fuse_masked_attention"]


def _const(graph: Graph, name: str) -> torch.Tensor | None:
    node = graph[name]
    return node.attrs["value"] if node.op == "const" and node.type.vis == "public" else None


def _mask_of(graph: Graph, node: Node, scores: str) -> tuple[torch.Tensor, str] | None:
    """(the mask ``node`` applies to ``scores``, float64, and its kind), or None: ``add`` adds it;
    ``replace`` (where, masked_fill) puts its nonzero entries, all exclusions, in place of scores."""
    attrs, operands = node.attrs, node.operands
    if node.op == "add" and len(operands) == 2 and attrs.get("alpha", 1) == 1 and scores in operands:
        other = operands[1] if operands[0] == scores else operands[0]
        mask = _const(graph, other)
        return None if mask is None or other == scores or mask.dtype == torch.bool else (mask.to(torch.float64), "add")
    if node.op == "where" and operands[:2] == (operands[0], scores) and len(operands) in (2, 3):
        condition = _const(graph, operands[0])
        fill = _const(graph, operands[2]) if len(operands) == 3 else torch.tensor(attrs.get("other"))
        if condition is None or fill is None or not isinstance(fill, torch.Tensor) or fill.dtype == torch.bool \
                or bool((fill.to(torch.float64) > EXCLUDED).any()):
            return None
        return torch.where(condition.bool(), 0.0, fill.to(torch.float64)), "replace"
    if node.op == "masked_fill" and operands[0] == scores and len(operands) == 2:
        condition = _const(graph, operands[1])
        value = attrs.get("value")
        if condition is None or not isinstance(value, (int, float)) or value > EXCLUDED:
            return None
        return torch.where(condition.bool(), float(value), 0.0).to(torch.float64), "replace"
    return None


def _scale_of(node: Node) -> float | None:
    value = node.attrs.get("other")
    if len(node.operands) != 1 or not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return None
    return float(value) if node.op == "mul" else 1.0 / float(value) if node.op == "div" and \
        node.attrs.get("rounding_mode") is None else None


def _match(graph: Graph, users: dict, product: Node):
    """(scale, masks, softmax, output matmul, the nodes to drop) of the chain from ``product``, or None."""
    scale, masks, chain, current = 1.0, [], [product], product
    step = graph.sole_reader(product.name, users)
    while step is not None and step.op in ("mul", "div", "add", "where", "masked_fill"):
        factor = _scale_of(step) if step.op in ("mul", "div") else None
        if factor is not None:   # later scalings scale the masks applied before them
            scale *= factor
            masks = [(mask, applied * factor, kind) for mask, applied, kind in masks]
        else:
            found = _mask_of(graph, step, current.name)
            if found is None:
                return None
            masks.append((*found[:1], 1.0, found[1]))
        chain.append(step)
        current, step = step, graph.sole_reader(step.name, users)
    if not masks or step is None or step.op != "softmax" or step.operands[0] != current.name \
            or step.type.shape != product.type.shape \
            or step.attrs.get("dim") not in (-1, len(step.type.shape) - 1):
        return None
    out = graph.sole_reader(step.name, users)
    if out is None or out.op != "matmul" or out.operands[0] != step.name or step.name in out.operands[1:]:
        return None
    return scale, masks, out, chain + [step]


def _masks_before(graph: Graph, users: dict, softmax: Node):
    """(the scores, their masks, the mask nodes) of a softmax whose input only passes through
    exclusion masks (Gemma-2: capped scores, then the causal ``where``), or None."""
    masks, chain, current = [], [], softmax.operands[0]
    while graph[current].op in ("add", "where", "masked_fill") \
            and getattr(graph.sole_reader(current, users), "name", None) == (chain[-1] if chain else softmax).name:
        node = graph[current]
        operands = node.operands
        scores = operands[1] if node.op == "where" else operands[0]
        if node.op == "add" and len(operands) == 2 and _const(graph, operands[0]) is not None:
            scores = operands[1]
        mask = _mask_of(graph, node, scores) if graph[scores].type.vis == "shared" else None
        if mask is None:
            break
        masks.append((mask[0], 1.0, mask[1]))
        chain.append(node)
        current = scores
    same_shape = graph[current].type.shape == softmax.type.shape   # masks that broadcast the scores: left as they are
    return (current, masks, chain) if masks and same_shape and not _very_negative_upstream(graph, current) else None


def _very_negative_upstream(graph: Graph, name: str) -> bool:
    """Whether an elementwise op before ``name`` (a scaling, a mask this fusion did not take) may
    already have pushed "kept" scores as low as an exclusion: then leaving an entry out would
    change which entries the softmax weighs (an upstream -1e4 doubled is below a later -1e4)."""
    node = graph[name]
    while node.op in ("mul", "div", "add", "sub", "where", "masked_fill"):
        constants = [graph[o].attrs["value"] for o in node.operands if graph[o].op == "const"]
        scalars = [v for k, v in node.attrs.items() if k in ("other", "value", "self") and isinstance(v, (int, float))]
        if any(bool((c.to(torch.float64) <= EXCLUDED).any()) for c in constants if not c.dtype == torch.bool) \
                or any(v <= EXCLUDED for v in scalars):
            return True
        shared = [o for o in node.operands if graph[o].type.vis == "shared"]
        if len(shared) != 1:
            return False
        node = graph[shared[0]]
    return False


def _combined(masks: list[tuple[torch.Tensor, float, str]], shape: tuple) -> torch.Tensor | None:
    """One additive mask (excluded entries -inf) from (mask, the scaling applied after it,
    kind), or None where that would change the function: a replaced entry that a later
    scaling lifts above -1e4 (no longer an exclusion), a mask that does not broadcast to the
    scores, or a row with no entry left (eager softmax gives it uniform weights, not zeros)."""
    total = torch.zeros((), dtype=torch.float64)
    excluded = torch.zeros((), dtype=torch.bool)
    for mask, factor, kind in masks:
        scaled = mask * factor
        out = scaled <= EXCLUDED
        if kind == "replace" and bool(((mask != 0) & ~out).any()):
            return None
        excluded = excluded | out
        total = total + torch.where(out, 0.0, scaled)
    total = torch.where(excluded, -torch.inf, total)
    while total.dim() > len(shape):
        if total.shape[0] != 1:
            return None
        total = total.squeeze(0)
    try:
        if torch.broadcast_shapes(tuple(total.shape), tuple(shape)) != tuple(shape):
            return None
    except RuntimeError:
        return None
    if not bool(torch.isfinite(total).expand(shape).any(-1).all()):
        return None
    return total


@register_pass("fuse_masked_attention")
def fuse_masked_attention(graph: Graph) -> Graph:
    users = graph.users()
    taken = {n.name for n in graph.nodes}
    replacements: dict[str, tuple[Node, ...]] = {}
    dropped: set[str] = set()
    for product in graph.nodes:
        if product.op != "matmul" or product.type.vis != "shared" or len(product.type.shape) < 2:
            continue
        found = _match(graph, users, product)
        if found is None:
            continue
        scale, masks, out, chain = found
        mask_value = _combined(masks, product.type.shape)
        if mask_value is None:
            continue
        query, key_t = product.operands
        origin = out.origin
        key_type = graph[key_t].type
        key_shape = key_type.shape[:-2] + (key_type.shape[-1], key_type.shape[-2])
        key = Node(fresh_name(f"{out.name}_key", taken), "transpose", (key_t,), {"dim0": -2, "dim1": -1},
                   TensorType(key_shape, key_type.kind, key_type.vis), origin)
        mask = Node(fresh_name(f"{out.name}_mask", taken), "const", (), {"value": mask_value},
                    TensorType(tuple(mask_value.shape), "real", "public"), origin)
        sdpa = out.with_(op="sdpa", operands=(query, key.name, out.operands[1], mask.name),
                         attrs={"dropout_p": 0.0, "is_causal": False, "scale": scale, "enable_gqa": False,
                                "softmax": "exact"})
        replacements[out.name] = (key, mask, sdpa)
        dropped.update(node.name for node in chain)
    for softmax in graph.nodes:   # the rest: a softmax behind masks, with no attention around it
        if softmax.op != "softmax" or softmax.name in dropped or softmax.type.vis != "shared" \
                or softmax.attrs.get("dim") not in (-1, len(softmax.type.shape) - 1):
            continue
        found = _masks_before(graph, users, softmax)
        if found is None:
            continue
        scores, masks, chain = found
        mask_value = _combined(masks, softmax.type.shape)
        if mask_value is None:
            continue
        mask = Node(fresh_name(f"{softmax.name}_mask", taken), "const", (), {"value": mask_value},
                    TensorType(tuple(mask_value.shape), "real", "public"), softmax.origin)
        replacements[softmax.name] = (mask, softmax.with_(op="masked_softmax", operands=(scores, mask.name),
                                                          attrs={"dim": -1, "softmax": "exact"}))
        dropped.update(node.name for node in chain)
    if not replacements:
        return graph
    from .eliminate_dead_code import eliminate_dead_code
    return eliminate_dead_code(graph.fused(dropped, replacements))   # masks and conditions nothing else reads
