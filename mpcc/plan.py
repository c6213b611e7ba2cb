"""The compiled plan: what both parties agree to run, and its file format.

A plan is public: the architecture, shapes, public constants and the names of
the server's weights, never their values. On disk it is one text file::

    mpcc-plan 2
    {"approx": "exact", "frac_bits": 16, "pipeline": [...], "protocol": 1, "sha256": "..."}
    mpcc.graph v1
    ...the IR, one line per node...

``Plan.hash`` (the ``sha256`` field) covers every setting and the whole IR:
the graph, ``frac_bits``, ``approx``, the protocol version, the pipeline and
the recorded ranges. Dealer material, pinned plans and (later) the network
handshake are bound to it, so a plan that computes anything differently has
another hash. A file whose hash does not match is refused, and so is
metadata of the wrong type or out of range (``PlanFormatError``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .ir import Graph, ParseError, parse

__all__ = ["Plan", "PlanFormatError", "PLAN_FORMAT_VERSION", "PROTOCOL_VERSION", "load"]

PLAN_FORMAT_VERSION = 2
# Bump whenever a protocol's messages, material or arithmetic change: plans and
# material of another protocol version never meet.
PROTOCOL_VERSION = 2
_MAGIC = "mpcc-plan"
FRAC_BITS_RANGE = (1, 20)    # f <= 20: LayerNorm's and the division's 3f-bit products stay below 2^61


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

    def __post_init__(self):
        _validate_settings(self._settings(), "plan")

    @property
    def hash(self) -> str:
        """sha256 over every setting and the IR: what both parties and the dealer agree on."""
        return _digest(self._settings(), self._body())

    def _body(self) -> str:
        return self.graph.dump()

    def _settings(self) -> dict:
        return {"approx": self.approx, "frac_bits": self.frac_bits, "pipeline": list(self.pipeline),
                "protocol": PROTOCOL_VERSION, "info": self.info}

    def _meta(self) -> dict:
        return {**self._settings(), "sha256": self.hash}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = f"{_MAGIC} {PLAN_FORMAT_VERSION}\n{json.dumps(self._meta(), sort_keys=True)}\n{self._body()}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)  # never leave a half-written plan under the real name
        return path

    def cost(self, network="lan"):
        """Rounds, bytes (online per party, offline, setup), a compute and a wall-time
        estimate on ``network`` (``"lan"``, ``"wan"``, ``"local"`` or ``"BANDWIDTH,LATENCY"``
        such as ``"100Mbps,40ms"``), broken down by layer and op family; see ``PlanCost``.
        Each call reruns the shape run (0.1 s for BERT-base)."""
        from .runtime.cost import plan_cost
        return plan_cost(self, network)

    @property
    def overflow_check(self) -> bool:
        """Whether runs open the secure overflow flag (``compile(..., overflow_check=True)``)."""
        return bool(self.info.get("overflow_check", False))

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
    if not isinstance(meta, dict) or set(meta) != _META_KEYS:
        found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise PlanFormatError(f"{path}: metadata must have exactly the keys {sorted(_META_KEYS)}, found {found}")
    settings = {key: meta[key] for key in _META_KEYS - {"sha256"}}
    _validate_settings(settings, str(path))
    if _digest(settings, body) != meta["sha256"]:
        raise PlanFormatError(f"{path}: checksum mismatch, the file is truncated or was modified")
    try:
        graph = parse(body)
    except ParseError as error:
        raise PlanFormatError(f"{path}: {error}") from None
    return Plan(graph, settings["approx"], tuple(settings["pipeline"]), settings["frac_bits"], settings["info"])


_META_KEYS = frozenset({"approx", "frac_bits", "pipeline", "protocol", "info", "sha256"})


def _digest(settings: dict, body: str) -> str:
    return hashlib.sha256((json.dumps(settings, sort_keys=True) + "\n" + body).encode()).hexdigest()


def _known_approx(label: str, resolve) -> bool:
    try:
        resolve(label)
    except ValueError:
        return False
    return True


def _validate_settings(settings: dict, where: str) -> None:
    """Types and ranges of every setting; the first problem raises ``PlanFormatError``."""
    from .passes.approximate import PRESETS, resolve_approx
    low, high = FRAC_BITS_RANGE
    frac_bits = settings["frac_bits"]
    checks = [
        (settings["protocol"] == PROTOCOL_VERSION,
         f"protocol version {settings['protocol']!r}, this mpcc speaks version {PROTOCOL_VERSION}; recompile the model"),
        (type(frac_bits) is int and low <= frac_bits <= high, f"frac_bits must be an integer in [{low}, {high}], "
                                                               f"not {frac_bits!r}"),
        (isinstance(settings["approx"], str) and _known_approx(settings["approx"], resolve_approx),
         f"approx must be a preset ({', '.join(sorted(PRESETS))}) or family=substitute pairs, "
         f"not {settings['approx']!r}"),
        (isinstance(settings["pipeline"], (list, tuple)) and all(isinstance(p, str) for p in settings["pipeline"]),
         "pipeline must be a list of pass names"),
        (isinstance(settings["info"], dict), "info must be a JSON object"),
    ]
    for ok, message in checks:
        if not ok:
            raise PlanFormatError(f"{where}: {message}")
