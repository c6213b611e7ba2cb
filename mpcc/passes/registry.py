"""Pass registry: a pass is a pure function ``Graph -> Graph`` with a name."""
from __future__ import annotations

from typing import Callable

from ..ir import Graph

__all__ = ["PASSES", "register_pass", "get_pass", "UnknownPassError"]

PASSES: dict[str, Callable[[Graph], Graph]] = {}


class UnknownPassError(KeyError):
    def __str__(self):
        return f"no pass named {self.args[0]!r}; passes are {sorted(PASSES)}"


def register_pass(name: str):
    def wrap(function: Callable[[Graph], Graph]) -> Callable[[Graph], Graph]:
        if name in PASSES:
            raise ValueError(f"pass {name} registered twice")
        PASSES[name] = function
        function.pass_name = name
        return function
    return wrap


def get_pass(name: str) -> Callable[[Graph], Graph]:
    try:
        return PASSES[name]
    except KeyError:
        raise UnknownPassError(name) from None
