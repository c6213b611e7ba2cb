"""mpcc: compile PyTorch transformers into two-party secure computation.

    >>> import mpcc  # doctest: +SKIP
    >>> plan = mpcc.compile(model, {"input_ids": ids})
    >>> print(plan.dump())
"""
from .runtime.allocator import tune_allocator

tune_allocator()  # first, before threads get malloc arenas: see mpcc/runtime/allocator.py

from . import ir  # noqa: E402
from .api import APPROXIMATIONS, Emulator, Session, compile, emulate, interpret, load, run, trace
from .frontend import TraceError, UnsupportedOpError
from .interpreter import InterpretError
from .plan import Plan, PlanFormatError
from .ranges import RangeReport, check_ranges
from .runtime import DealerError, PlanRefused, RunError
from . import net  # noqa: E402
from .net import connect, serve  # noqa: E402

__all__ = ["compile", "trace", "interpret", "load", "run", "Session", "ir", "Plan", "APPROXIMATIONS", "TraceError",
           "UnsupportedOpError", "InterpretError", "PlanFormatError", "check_ranges", "RangeReport", "RunError",
           "PlanRefused", "DealerError", "emulate", "Emulator", "serve", "connect", "net"]
__version__ = "0.1.0"
