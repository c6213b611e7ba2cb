"""Approximation presets: which substitute replaces each non-linear function.

An approximation is a choice per op family (``softmax``, ``gelu``), each
naming a substitute from ``SUBSTITUTES``. A preset is a named choice
(``exact``, ``mpcformer``, ...), registered by its module under
``mpcc/passes/preset_*.py``; a dict overrides a preset per family:
``{"preset": "mpcformer", "gelu": "exact"}`` (no ``preset``: ``exact``).

The ``approximate(softmax=...,gelu=...)`` pass puts the substitutes in: a
``softmax`` becomes the substitute's op, an ``sdpa`` gets the variant in its
``softmax`` attribute (attention keeps its masks and one protocol), a
``gelu`` becomes the substitute's op. Each substitute op's reference is its
own formula, so ``mpcc.interpret`` runs the substituted model.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Mapping

from ..ir import Graph, Node
from .lower_to_mpc import _Lowering, register_lowering
from .registry import pass_name, register_pass

__all__ = ["SUBSTITUTES", "PRESETS", "register_preset", "resolve_approx", "approx_label", "approximate",
           "approximate_step", "ApproxError"]

# family -> substitute name -> the op that replaces the family's op (None: the op itself)
SUBSTITUTES: dict[str, dict[str, str | None]] = {
    "softmax": {"exact": None, "2quad": "softmax_2quad", "2quad_goldschmidt": "softmax_2quad_goldschmidt",
                "puma": "softmax_puma", "power": "softmax_power"},
    "gelu": {"exact": None, "quad": "gelu_quad", "secformer": "gelu_secformer", "puma": "gelu_puma",
             "quartic": "gelu_quartic"},
    "layer_norm": {"exact": None, "goldschmidt": "layer_norm_goldschmidt", "newton": "layer_norm_newton"},
}
PRESETS: dict[str, dict[str, str]] = {}
PRESET_DOCS: dict[str, str] = {}


class ApproxError(ValueError):
    """An unknown preset, family or substitute; the message lists the valid ones."""


def register_preset(name: str, choices: Mapping[str, str], doc: str) -> None:
    """A preset: a substitute per family (families left out stay exact)."""
    if name in PRESETS:
        raise ValueError(f"preset {name} registered twice")
    full = {family: "exact" for family in SUBSTITUTES}
    full.update(choices)
    _check(full, f"preset {name!r}")
    PRESETS[name], PRESET_DOCS[name] = full, doc


def _check(choices: Mapping[str, str], where: str) -> None:
    for family, choice in choices.items():
        if family not in SUBSTITUTES:
            raise ApproxError(f"{where}: no op family {family!r}; families are {sorted(SUBSTITUTES)}")
        if choice not in SUBSTITUTES[family]:
            raise ApproxError(f"{where}: no {family} substitute {choice!r}; {family} substitutes are "
                              f"{sorted(SUBSTITUTES[family])}")


def resolve_approx(approx: str | Mapping[str, str]) -> dict[str, str]:
    """The substitute of every family for ``approx`` (a preset name, or a dict
    of overrides with an optional ``preset`` key)."""
    if isinstance(approx, str):
        if approx in PRESETS:
            return dict(PRESETS[approx])
        if "=" in approx:   # a plan's label for overrides: "softmax=2quad,gelu=exact"
            return resolve_approx(dict(item.split("=", 1) for item in approx.split(",")))
        raise ApproxError(f"no approximation preset {approx!r}; presets are {sorted(PRESETS)} "
                          f"(or a dict per op family: {sorted(SUBSTITUTES)})")
    if not isinstance(approx, Mapping):
        raise ApproxError(f"approx must be a preset name or a dict per op family, not {type(approx).__name__}")
    overrides = dict(approx)
    base = overrides.pop("preset", "exact")
    if base not in PRESETS:   # a name, never a label: no recursion through "preset=..."
        raise ApproxError(f"no approximation preset {base!r}; presets are {sorted(PRESETS)}")
    choices = dict(PRESETS[base])
    _check(overrides, "approx")
    choices.update(overrides)
    return choices


def approx_label(approx: str | Mapping[str, str]) -> str:
    """One spelling for a plan: the preset's name when the choice is a preset,
    else ``family=substitute,...`` (sorted)."""
    choices = resolve_approx(approx)
    for name, preset in PRESETS.items():
        if preset == choices:
            return name
    return ",".join(f"{family}={choice}" for family, choice in sorted(choices.items()))


def approximate_step(approx: str | Mapping[str, str]) -> str:
    """The pipeline entry of the ``approximate`` pass for ``approx``."""
    return pass_name("approximate", **resolve_approx(approx))


def _substitute(node: Node, family: str, choice: str) -> Node:
    op = SUBSTITUTES[family][choice]
    if op is None:
        return node
    return replace(node, op=op, attrs=_KEPT_ATTRS[family](node.attrs))


_KEPT_ATTRS = {   # what each family's substitute op takes of the original's attributes
    "softmax": lambda attrs: {"dim": attrs["dim"]},
    "gelu": lambda attrs: {},
    "layer_norm": dict,
}


_REWRITES = {
    "softmax": lambda node, choices: _substitute(node, "softmax", choices["softmax"]),
    "gelu": lambda node, choices: _substitute(node, "gelu", choices["gelu"]),
    "layer_norm": lambda node, choices: _substitute(node, "layer_norm", choices["layer_norm"]),
    "sdpa": lambda node, choices: node if choices["softmax"] == "exact" else replace(
        node, attrs={**node.attrs, "softmax": choices["softmax"]}),
    "masked_softmax": lambda node, choices: node if choices["softmax"] == "exact" else replace(
        node, attrs={**node.attrs, "softmax": choices["softmax"]}),
}


@register_pass("approximate", parametric=True)
def approximate(graph: Graph, **choices: str) -> Graph:
    """Replace each family's op by the chosen substitute (``exact`` keeps it)."""
    full = {family: "exact" for family in SUBSTITUTES}
    full.update(choices)
    _check(full, "approximate")
    nodes = tuple(_REWRITES[node.op](node, full) if node.op in _REWRITES else node for node in graph.nodes)
    return Graph(nodes, graph.outputs)


# the substitutes' ops lower like their originals, to their ``mpc.`` op
_LOWER_LIKE = {"softmax": _Lowering.lower_as, "gelu": _Lowering.lower_as, "layer_norm": _Lowering.lower_layer_norm}
for _family, _names in SUBSTITUTES.items():
    for _op in filter(None, _names.values()):
        register_lowering(_op)(lambda lowering, node, make, share, rule=_LOWER_LIKE[_family]:
                               rule(lowering, node, make, share, "mpc." + node.op))
