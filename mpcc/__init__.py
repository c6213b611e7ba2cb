"""mpcc: compile PyTorch transformers into two-party secure computation."""
from .frontend import TraceError, UnsupportedOpError, trace
from .interpreter import InterpretError, interpret
from . import ir

__all__ = ["trace", "interpret", "ir", "TraceError", "UnsupportedOpError", "InterpretError"]
__version__ = "0.1.0"
