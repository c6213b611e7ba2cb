"""The dealer: produces, ahead of time, exactly the correlated randomness a
plan's protocols ask for (it runs them on shapes in a ``DealerContext``).

Party 0's share of everything comes from its seed; only party 1's
(and any one-party items) are stored, counted as offline bytes, and can be
written to safetensors files for a later run.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..backends import RingBackend, get_backend
from ..backends.prg import new_seed
from .executor import execute
from .shape_context import DealerContext, replay

__all__ = ["Dealer", "DealtMaterial", "MaterialStream", "MaterialFileError"]


class MaterialFileError(ValueError):
    """A material file that does not belong to this plan or inference, or is damaged."""


@dataclass
class DealtMaterial:
    inference: str
    stored: tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]
    materials: list = field(default_factory=list)
    offline_bytes: tuple[int, int] = (0, 0)

    def save(self, party: int, path: str | Path, plan_hash: str) -> Path:
        tensors = {f"{node}/{i}": t.cpu().contiguous() for node, items in self.stored[party].items()
                   for i, t in enumerate(items)}
        save_file(tensors, str(path), metadata={"plan": plan_hash, "inference": self.inference, "party": str(party)})
        return Path(path)

    @classmethod
    def load(cls, client_path: str | Path, server_path: str | Path, plan_hash: str) -> "DealtMaterial":
        """Both parties' files, as written by ``save``; they must be for the same inference."""
        inference0, stored0 = cls.load_party(client_path, plan_hash, 0)
        inference1, stored1 = cls.load_party(server_path, plan_hash, 1)
        if inference0 != inference1:
            raise MaterialFileError(f"material files are for different inferences ({inference0!r}, {inference1!r})")
        return cls(inference0, (stored0, stored1))

    @staticmethod
    def load_party(path: str | Path, plan_hash: str, party: int) -> tuple[str, dict[str, list[torch.Tensor]]]:
        try:
            from safetensors import safe_open
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises several kinds for damaged files
            raise MaterialFileError(f"{path}: not a readable material file ({error})") from None
        if meta.get("plan") != plan_hash or meta.get("party") != str(party):
            raise MaterialFileError(f"{path}: material for plan {meta.get('plan', '?')[:12]} party {meta.get('party')}, "
                                    f"expected plan {plan_hash[:12]} party {party}")
        items: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for key, tensor in tensors.items():
            node, index = key.rsplit("/", 1)
            items.setdefault(node, []).append((int(index), tensor))
        return meta["inference"], {node: [t for _, t in sorted(v)] for node, v in items.items()}


class MaterialStream:
    """Material dealt in a background thread while the parties run: a party
    asking for a node's stored items waits until the dealer has published them."""

    def __init__(self, inference: str, timeout: float):
        self.inference = inference
        self.stored: tuple[dict, dict] = ({}, {})
        self.offline_bytes = (0, 0)
        self.seconds = 0.0
        self.timeout = timeout
        self._ready: set[str] = set()
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def publish(self, node: str) -> None:
        with self._cond:
            self._ready.add(node)
            self._cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._done, self._error = True, error
            self._cond.notify_all()

    def items(self, party: int, node: str) -> list:
        with self._cond:
            ok = self._cond.wait_for(lambda: node in self._ready or self._done, timeout=self.timeout)
            if self._error is not None:
                raise RuntimeError(f"the dealer failed: {self._error}")
            if not ok:
                raise RuntimeError(f"no dealer material for {node} within {self.timeout:.0f} s")
        return self.stored[party].get(node, [])

    def start(self, dealer: "Dealer") -> threading.Thread:
        tape = dealer.tape()

        def work():
            start = time.perf_counter()
            try:
                with torch.no_grad():
                    _, self.offline_bytes = replay(tape, dealer.backend, dealer.seeds, self.inference,
                                                   self.stored, self.publish, dealer.scoped)
                self.offline_bytes = tuple(self.offline_bytes)
                self.finish()
            except BaseException as error:  # parties waiting on material must not hang
                self.finish(error)
            finally:
                self.seconds = time.perf_counter() - start
        thread = threading.Thread(target=work, name="mpcc-dealer", daemon=True)
        thread.start()
        return thread


class Dealer:
    """Deals material for one plan and one deployment (fixed seeds)."""

    def __init__(self, plan, backend: str | RingBackend = "cpu", seeds: tuple[bytes, bytes] | None = None):
        self.plan = plan
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.seeds = seeds or (new_seed(), new_seed())
        self._tape = None
        self._materials = None
        self.scoped: dict = {}   # deployment-scoped masks, drawn once

    def tape(self):
        """The plan's requests for randomness, recorded once per plan object from a
        shape-only run (kept on the plan in memory, so later sessions reuse it)."""
        if self._tape is None:
            tapes = self.plan.__dict__.setdefault("_dealer_tapes", {})  # per backend: fns close over its matmul
            cached = tapes.get(self.backend.name)
            if cached is None:
                ctx = DealerContext(self.backend, self.plan.frac_bits)
                with torch.no_grad():
                    execute(self.plan.graph, ctx)
                cached = tapes[self.backend.name] = (ctx.tape, ctx.materials)
            self._tape, self._materials = cached
        return self._tape

    def seed_for(self, party: int) -> bytes:
        """What the dealer gives a party once: its PRG seed."""
        return self.seeds[party]

    def deal(self, inference: str) -> DealtMaterial:
        """Fresh material for one inference (``inference`` must never repeat)."""
        tape = self.tape()
        with torch.no_grad():
            stored, offline = replay(tape, self.backend, self.seeds, inference, scoped=self.scoped)
        return DealtMaterial(inference, stored, self._materials, tuple(offline))
