"""The steps the ``mpcc`` command shares: what an argument names (preset, model
directory or plan file), the ``--input``/``--owner`` values, loading, compiling
and the float64 reference, each shown as a named step on stderr, and the
verdict against torch.
"""
from __future__ import annotations

import logging
import re
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

__all__ = ["CliError", "step", "is_plan", "load_model_and_inputs", "parse_owners", "load_plan", "compile_model",
           "reference", "verdict", "check_backend", "INTERPRET_TOLERANCE", "SECURE_TOLERANCE", "OWNER_CHOICES"]

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


@contextmanager
def _no_weight_bars():
    """Without transformers' "Loading weights" bar: one more line on stderr, which the step replaces."""
    from transformers.utils import logging as hf_logging
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


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


_ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=(.*)", re.S)
OWNER_CHOICES = ("public", "client", "server")


def _by_name(given: list[str] | None, option: str, unnamed: str | None = None) -> dict[str, str]:
    """``NAME=VALUE`` option values by name; a value without ``NAME=`` is ``unnamed``'s (if any)."""
    found = {}
    for text in given or ():
        match = _ASSIGNMENT.fullmatch(text)
        if not match and unnamed is None:
            raise CliError(f"{option} takes NAME={'|'.join(OWNER_CHOICES)}, not {text!r}")
        name, value = match.groups() if match else (unnamed, text)
        if name in found:
            raise CliError(f"{option} gives {name} twice")
        found[name] = value
    return found


def parse_owners(given: list[str] | None) -> dict[str, str]:
    """``--owner NAME=public|client|server``, repeated, as ``compile``'s ``owners``."""
    owners = _by_name(given, "--owner")
    for name, owner in owners.items():
        if owner not in OWNER_CHOICES:
            raise CliError(f"--owner {name}={owner}: the owner must be one of {', '.join(OWNER_CHOICES)}")
    return owners


def load_model_and_inputs(name: str, seq: int | None = None, given: list[str] | None = None,
                          owners: dict[str, str] | None = None, plan=None):
    """The model (preset or directory) and its inputs: those ``--input`` gives, the rest made up;
    each input ``owners`` names is there too. For a plan: exactly its inputs, with its shapes."""
    from .inputs import example_inputs, plan_inputs
    from .models import load_model
    values = _by_name(given, "--input", unnamed="input_ids")
    with step(f"loading {name}"), _no_weight_bars():
        loaded = load_model(name)
    if plan is None:
        return loaded, example_inputs(loaded, values, seq_len=seq, names=owners or ())
    shapes = {node.name: node.type.shape for node in plan.graph.inputs}
    return loaded, plan_inputs(loaded, shapes, values, seq_len=seq)


def load_plan(path: str):
    import mpcc
    with step(f"reading the plan {path}"):
        return mpcc.load(path)


def compile_model(loaded, inputs, approx: str = "exact", overflow_check: bool = False,
                  owners: dict[str, str] | None = None):
    import mpcc
    with step(f"tracing {loaded.name} with torch.export and compiling it"):
        return mpcc.compile(loaded.model, inputs, approx=approx, overflow_check=overflow_check, owners=owners)


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
