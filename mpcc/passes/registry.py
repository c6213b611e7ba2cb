"""Pass registry: a pass is a pure function ``Graph -> Graph`` with a name.

A parametric pass takes keyword settings and is named with them in a
pipeline, ``approximate(gelu=quad,softmax=2quad)``: the pipeline list that a
plan records (and its hash covers) then says exactly what ran.
"""
from __future__ import annotations

import functools
import re
from typing import Callable

from ..ir import Graph

__all__ = ["PASSES", "register_pass", "get_pass", "UnknownPassError", "pass_name"]

PASSES: dict[str, Callable[..., Graph]] = {}
_PARAMETRIC: set[str] = set()
_CALL = re.compile(r"(\w+)\(([^()]*)\)")


class UnknownPassError(KeyError):
    def __str__(self):
        return f"no pass named {self.args[0]!r}; passes are {sorted(PASSES)}"


def register_pass(name: str, *, parametric: bool = False):
    def wrap(function: Callable[..., Graph]) -> Callable[..., Graph]:
        if name in PASSES:
            raise ValueError(f"pass {name} registered twice")
        PASSES[name] = function
        if parametric:
            _PARAMETRIC.add(name)
        function.pass_name = name
        return function
    return wrap


def pass_name(name: str, **settings: str) -> str:
    """The pipeline entry of a parametric pass with ``settings`` (sorted, so one spelling)."""
    return f"{name}({','.join(f'{key}={value}' for key, value in sorted(settings.items()))})"


def get_pass(name: str) -> Callable[[Graph], Graph]:
    """The pass named ``name``, or a parametric pass bound to the settings in ``name(k=v,...)``."""
    call = _CALL.fullmatch(name)
    if call is None:   # a parametric pass named alone runs with its defaults
        try:
            return PASSES[name]
        except KeyError:
            raise UnknownPassError(name) from None
    base, body = call.groups()
    if base not in _PARAMETRIC:
        raise UnknownPassError(name)
    settings = dict(item.split("=", 1) for item in body.split(",") if item)
    return functools.partial(PASSES[base], **settings)
