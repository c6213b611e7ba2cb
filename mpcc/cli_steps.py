"""The steps the ``mpcc`` command shares: what an argument names (preset, model
directory or plan file), loading, compiling and the float64 reference, each
shown as a named step on stderr, and the verdict against torch.
"""
from __future__ import annotations

import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CliError", "step", "is_plan", "load_model_and_inputs", "load_plan", "compile_model", "reference",
           "verdict", "check_backend", "INTERPRET_TOLERANCE", "SECURE_TOLERANCE"]

INTERPRET_TOLERANCE = 1e-5   # float64 interpreter against float64 torch: only summation order differs
SECURE_TOLERANCE = 1e-1      # fixed point with 16 fractional bits and the protocols' documented errors


class CliError(Exception):
    """A mistake in how mpcc was called; ``main`` prints it as one line and exits with 2."""


@contextmanager
def step(description: str):
    """Run the block as one named step: a spinner with ``description`` on stderr
    while it runs (only when stderr is a terminal), and torch's and transformers'
    log lines and warnings kept out of the terminal meanwhile."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if sys.stderr.isatty():
                from rich.console import Console
                with Console(stderr=True).status(description + " ..."):
                    yield
            else:
                yield
    finally:
        logging.disable(previous)


def _presets() -> str:
    from .models import PRESETS
    return ", ".join(PRESETS)


def is_plan(name: str, *, plans: bool = True) -> bool:
    """Whether ``name`` is a plan file (``False``: a preset or a model directory).

    A preset name wins, then an existing directory (a model), then an existing
    file (a plan, checked when it is read). ``plans=False`` for commands that
    need a model."""
    from .models import PRESETS
    path = Path(name)
    if name in PRESETS or path.is_dir():
        return False
    if path.is_file():
        if plans:
            return True
        raise CliError(f"{name} is a file; give a preset ({_presets()}) or a Hugging Face model directory")
    if plans and path.suffix:
        raise CliError(f"no such file: {name}")
    what = "a model directory or a plan file" if plans else "or a model directory"
    raise CliError(f"{name!r} is not a preset ({_presets()}), {what}")


def load_model_and_inputs(name: str, seq: int | None = None, text: str | None = None):
    """The model (preset or directory) and its example inputs."""
    from .models import example_inputs, load_model
    with step(f"loading {name}"):
        loaded = load_model(name)
    return loaded, example_inputs(loaded, seq_len=seq, text=text)


def load_plan(path: str):
    import mpcc
    with step(f"reading the plan {path}"):
        return mpcc.load(path)


def compile_model(loaded, inputs, approx: str = "exact", overflow_check: bool = False):
    import mpcc
    with step(f"tracing {loaded.name} with torch.export and compiling it"):
        return mpcc.compile(loaded.model, inputs, approx=approx, overflow_check=overflow_check)


def reference(loaded, inputs):
    """The model's outputs in float64 torch: what every result is compared against."""
    from .frontend import reference_outputs
    with step("running the float64 torch reference"):
        return reference_outputs(loaded.model, inputs)


def verdict(worst: float, tolerance: float, against: str = "float64 torch") -> int:
    """Print the one-line verdict against ``against``; the exit code (1 on a mismatch)."""
    if worst <= tolerance:
        print(f"OK: max abs error {worst:.2e} vs {against} (tolerance {tolerance:.0e})")
        return 0
    print(f"MISMATCH: max abs error {worst:.2e} vs {against} is above the tolerance {tolerance:.0e}")
    return 1


def check_backend(name: str) -> None:
    """Refuse ``cuda`` up front when there is no GPU, before minutes of loading and compiling."""
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--backend cuda needs a CUDA GPU and torch sees none; use --backend cpu "
                       "(or limb, the GPU algorithm on CPU)")
