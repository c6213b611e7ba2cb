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
from .context import payload_bytes
from .executor import execute
from .shape_context import DealerContext, Replay

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


LOOKAHEAD_BYTES = 96 << 20   # stored material the dealer may have made and the parties not yet taken


class MaterialStream:
    """Material dealt in a background thread while the parties run: a party
    asking for a node's stored items waits until the dealer has published them.

    The dealer stays at most ``lookahead_bytes`` of untaken material ahead of
    the parties (it finishes the node it is on), so memory stays bounded on
    deep models and the dealer does not take CPU from parties it is far ahead of.
    """

    def __init__(self, inference: str, timeout: float, lookahead_bytes: int = LOOKAHEAD_BYTES):
        self.inference = inference
        self.stored: tuple[dict, dict] = ({}, {})
        self.offline_bytes = (0, 0)
        self.seconds = 0.0           # the dealer's busy time (not counting pauses)
        self.paused_seconds = 0.0    # time the dealer waited for the parties to take material
        self.most_ahead_bytes = 0    # the most stored material made and not yet taken
        self.timeout = timeout
        self.lookahead_bytes = lookahead_bytes
        self._untaken = 0
        self._ready: set[str] = set()
        self._done = False
        self._cancelled = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def publish(self, node: str) -> None:
        """The dealer's side: ``node``'s items are complete; wait while too far ahead."""
        size = sum(payload_bytes(t) for party in (0, 1) for t in self.stored[party].get(node, []))
        with self._cond:
            self._ready.add(node)
            self._untaken += size
            self.most_ahead_bytes = max(self.most_ahead_bytes, self._untaken)
            self._cond.notify_all()
            start = time.perf_counter()
            ok = self._cond.wait_for(lambda: self._untaken <= self.lookahead_bytes or self._cancelled,
                                     timeout=self.timeout)
            self.paused_seconds += time.perf_counter() - start
            if self._cancelled:
                raise RuntimeError("the run stopped")
            if not ok:
                raise RuntimeError(f"the parties took no dealer material within {self.timeout:.0f} s")

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._done, self._error = True, error
            self._cond.notify_all()

    def cancel(self) -> None:
        """The parties stopped: the dealer must not wait for them to take more."""
        with self._cond:
            self._cancelled = True
            self._cond.notify_all()

    def take(self, party: int, node: str, index: int) -> torch.Tensor | None:
        """Item ``index`` of ``node`` for ``party`` (None when there is no such item);
        one-time material: the stream lets go of it."""
        with self._cond:
            ok = self._cond.wait_for(lambda: node in self._ready or self._done, timeout=self.timeout)
            if self._error is not None:
                raise RuntimeError(f"the dealer failed: {self._error}")
            if not ok:
                raise RuntimeError(f"no dealer material for {node} within {self.timeout:.0f} s")
            pieces = self.stored[party].get(node, [])
            if index >= len(pieces) or pieces[index] is None:
                return None
            piece, pieces[index] = pieces[index], None
            self._untaken -= payload_bytes(piece)
            self._cond.notify_all()
            return piece

    def start(self, dealer: "Dealer") -> threading.Thread:
        def work():
            start = time.perf_counter()
            try:
                dealing = Replay(dealer.backend, dealer.seeds, self.inference, self.stored, self.publish, dealer.scoped)
                dealer.deal_into(dealing)
                self.offline_bytes = tuple(dealing.offline)
                self.finish()
            except BaseException as error:  # parties waiting on material must not hang
                self.finish(error)
            finally:
                self.seconds = time.perf_counter() - start - self.paused_seconds
        thread = threading.Thread(target=work, name="mpcc-dealer", daemon=True)
        thread.start()
        return thread


class Dealer:
    """Deals material for one plan and one deployment (fixed seeds)."""

    def __init__(self, plan, backend: str | RingBackend = "cpu", seeds: tuple[bytes, bytes] | None = None):
        self.plan = plan
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.seeds = seeds or (new_seed(), new_seed())
        self._materials = None
        self.shape_run_seconds = 0.0   # the one-time shape run (with the first dealing), 0 when the plan had a tape
        self.scoped: dict = {}   # deployment-scoped masks, drawn once

    def _cached(self):
        tapes = self.plan.__dict__.setdefault("_dealer_tapes", {})  # per backend: fns close over its matmul
        return tapes, tapes.get(self.backend.name)

    def deal_into(self, dealing: Replay) -> None:
        """Deal every node of the plan into ``dealing``.

        The plan's requests for randomness (its tape) are recorded once per
        plan object by a shape-only run and kept on the plan in memory. That
        first time, each node is dealt as soon as it is recorded: parties
        start on the first nodes' material without waiting for the whole
        shape run.
        """
        tapes, cached = self._cached()
        if cached is None:
            start = time.perf_counter()
            ctx = DealerContext(self.backend, self.plan.frac_bits)
            done, dealing_seconds = [0], [0.0]

            def deal_recorded(node, seconds):
                if len(ctx.tape) > done[0]:
                    begin = time.perf_counter()
                    dealing.node(ctx.tape, done[0], len(ctx.tape))
                    dealing_seconds[0] += time.perf_counter() - begin
                done[0] = len(ctx.tape)
            with torch.no_grad():
                execute(self.plan.graph, ctx, on_node=deal_recorded)
            cached = tapes[self.backend.name] = (ctx.tape, ctx.materials)
            self.shape_run_seconds = time.perf_counter() - start - dealing_seconds[0]
        else:
            with torch.no_grad():
                dealing.tape(cached[0])
        self._materials = cached[1]

    def seed_for(self, party: int) -> bytes:
        """What the dealer gives a party once: its PRG seed."""
        return self.seeds[party]

    def deal(self, inference: str) -> DealtMaterial:
        """Fresh material for one inference (``inference`` must never repeat)."""
        dealing = Replay(self.backend, self.seeds, inference, scoped=self.scoped)
        self.deal_into(dealing)
        return DealtMaterial(inference, dealing.stored, self._materials, tuple(dealing.offline))
