"""The compiled plan: what both parties agree to run, and its file format.

A plan is public: the architecture, shapes, public constants and the names of
the server's weights, never their values. On disk it is one text file::

    mpcc-plan 1
    {"approx": "exact", "frac_bits": 16, "pipeline": [...], "sha256": "..."}
    mpcc.graph v1
    ...the IR, one line per node...

The checksum covers everything after the metadata line, so a truncated or
edited file is refused instead of half-read.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .ir import Graph, ParseError, parse

__all__ = ["Plan", "PlanFormatError", "PLAN_FORMAT_VERSION", "load"]

PLAN_FORMAT_VERSION = 1
_MAGIC = "mpcc-plan"


class PlanFormatError(ValueError):
    """A plan file that is not a plan, is from another format version, or is damaged."""


@dataclass
class Plan:
    """A compiled model: the IR after the pipeline, and its settings."""
    graph: Graph
    approx: str = "exact"
    pipeline: tuple[str, ...] = ()
    frac_bits: int = 16
    info: dict = field(default_factory=dict)

    def dump(self) -> str:
        """The plan's IR as text (see ``docs/ir.md``)."""
        return self.graph.dump()

    @property
    def hash(self) -> str:
        return hashlib.sha256(self._body().encode()).hexdigest()

    def _body(self) -> str:
        return self.graph.dump()

    def _meta(self) -> dict:
        return {"approx": self.approx, "frac_bits": self.frac_bits, "pipeline": list(self.pipeline),
                "info": self.info, "sha256": self.hash}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = f"{_MAGIC} {PLAN_FORMAT_VERSION}\n{json.dumps(self._meta(), sort_keys=True)}\n{self._body()}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # never leave a half-written plan under the real name
        return path

    def cost(self, network: str = "lan"):
        """Rounds, bytes (online per party, offline, setup) and an estimate; see ``PlanCost``."""
        from .runtime.cost import plan_cost
        return plan_cost(self)

    @property
    def inputs(self) -> dict[str, str]:
        """Input name -> owner."""
        return {n.name: n.attrs["owner"] for n in self.graph.inputs}

    @property
    def weight_keys(self) -> list[str]:
        return [n.attrs["key"] for n in self.graph.params]


def load(path: str | Path) -> Plan:
    """Read a plan written by ``Plan.save``; damaged or foreign files raise ``PlanFormatError``."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise PlanFormatError(f"{path}: not a text file, so not an mpcc plan") from None
    header, _, rest = text.partition("\n")
    parts = header.split()
    if len(parts) != 2 or parts[0] != _MAGIC:
        raise PlanFormatError(f"{path}: not an mpcc plan (first line is {header[:40]!r})")
    if parts[1] != str(PLAN_FORMAT_VERSION):
        raise PlanFormatError(f"{path}: plan format version {parts[1]}, this mpcc reads version "
                              f"{PLAN_FORMAT_VERSION}; recompile the model")
    meta_line, _, body = rest.partition("\n")
    try:
        meta = json.loads(meta_line)
    except json.JSONDecodeError as error:
        raise PlanFormatError(f"{path}: damaged metadata line ({error})") from None
    if hashlib.sha256(body.encode()).hexdigest() != meta.get("sha256"):
        raise PlanFormatError(f"{path}: checksum mismatch, the file is truncated or was modified")
    try:
        graph = parse(body)
    except ParseError as error:
        raise PlanFormatError(f"{path}: {error}") from None
    return Plan(graph, meta.get("approx", "exact"), tuple(meta.get("pipeline", ())), int(meta.get("frac_bits", 16)),
                meta.get("info", {}))
