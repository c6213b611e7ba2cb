"""The op record and the registry: "a primitive is a name with rules".

An op's ``params`` name its arguments in order. At a call site each argument
is either an operand (a value of the graph) or an attribute (a literal). An
attribute that is a list may hold ``MARK`` entries, each standing for the next
operand (``cat(%a, %b, tensors=['$', '$'], dim=0)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["OpDef", "REGISTRY", "register", "define", "get_op", "UnknownOpError", "bind_arguments", "MARK",
           "KIND_DTYPES"]

MARK = "$"
KIND_DTYPES = {"real": torch.float64, "int": torch.int64, "bool": torch.bool}


class UnknownOpError(KeyError):
    def __str__(self):
        return f"no op named {self.args[0]!r} in the mpcc op registry"


@dataclass(frozen=True)
class OpDef:
    """Everything mpcc knows about one op, kept in one place.

    Attributes:
        name: the IR name.
        params: argument names in order (each an operand or an attribute).
        reference: the plaintext torch meaning; called with the arguments in
            ``params`` order. Used by the interpreter, folding and tests.
        doc: one line for the IR reference.
        family: for reports (``shape``, ``elementwise``, ``nn``, ...).
        index_params: params read as indices or control; they must be public
            unless the whole op is local to one party.
        source: an op with no operands whose value comes from outside
            (``input``, ``param``) and is never folded.
        protocol: for MPC ops, ``protocol(ctx, *args)`` with args bound as
            for ``reference`` but holding this party's shares (or plaintext
            where the param is public or this party's own). Its randomness
            and cost come from running it in the dealer and cost contexts
            (``mpcc.runtime.cost``), so the three cannot disagree.
        wires: the protocol takes wires (``ops/wire.py``) for its shared
            operands and may return one; other protocols get plain shares.
        defaults: trailing params that a call site may leave out (neither
            attribute nor operand), with the value they then take.
    """
    name: str
    params: tuple[str, ...]
    reference: Callable[..., Any] | None
    doc: str
    family: str = "elementwise"
    index_params: tuple[str, ...] = ()
    source: bool = False
    protocol: Callable[..., Any] | None = None
    wires: bool = False
    defaults: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict, compare=False)

    def bind(self, operands: list, attrs: dict[str, Any]) -> list:
        return bind_arguments(self, operands, attrs)

    def evaluate(self, operands: list, attrs: dict[str, Any]):
        if self.reference is None:
            raise TypeError(f"op {self.name} has no plaintext reference")
        return self.reference(*self.bind(operands, attrs))

    def operand_params(self, attrs: dict[str, Any]) -> list[str]:
        """For each operand, the name of the param it fills (for error messages and checks)."""
        names = []
        for param in self.params:
            if param not in attrs:
                names.append(param)
            elif isinstance(attrs[param], (list, tuple)):
                names.extend(param for item in attrs[param] if item == MARK)
        return names


REGISTRY: dict[str, OpDef] = {}


def register(op: OpDef) -> OpDef:
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name} registered twice")
    REGISTRY[op.name] = op
    return op


def define(name, params, reference, doc, family="elementwise", **fields) -> OpDef:
    """Build and register an OpDef (the shorthand every op table uses)."""
    return register(OpDef(name, tuple(params), reference, doc, family, **fields))


def get_op(name: str) -> OpDef:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOpError(name) from None


def bind_arguments(op: OpDef, operands: list, attrs: dict[str, Any]) -> list:
    """Interleave operands and attributes into the positional argument list."""
    unknown = set(attrs) - set(op.params)
    if unknown:
        raise TypeError(f"{op.name}: unknown attribute(s) {sorted(unknown)}; params are {op.params}")
    queue = list(operands)
    args = []
    for param in op.params:
        if param in attrs:
            value = attrs[param]
            if isinstance(value, (list, tuple)) and MARK in value:
                value = [queue.pop(0) if item == MARK else item for item in value]
            args.append(value)
        elif not queue and param in op.defaults:
            args.append(op.defaults[param])
        else:
            if not queue:
                raise TypeError(f"{op.name}: missing operand for {param!r}")
            args.append(queue.pop(0))
    if queue:
        raise TypeError(f"{op.name}: {len(queue)} operand(s) too many")
    return args
