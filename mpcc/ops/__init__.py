"""The op registry: each op is one ``OpDef`` record (see ``base.py``)."""
from .base import MARK, REGISTRY, OpDef, UnknownOpError, get_op, register
from . import tensor as _tensor  # noqa: F401  (registers ops)
from . import nn as _nn  # noqa: F401
from . import arith as _arith, compare as _compare, nonlinear as _nonlinear  # noqa: F401
from . import attention as _attention, layer_norm as _layer_norm, substitutes as _substitutes  # noqa: F401
from . import power as _power  # noqa: F401  (the power preset's substitutes)
from . import lookup as _lookup  # noqa: F401  (the client's lookup in a server table)

__all__ = ["MARK", "REGISTRY", "OpDef", "UnknownOpError", "get_op", "register"]
