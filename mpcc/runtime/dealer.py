"""The dealer: produces, ahead of time, exactly the correlated randomness a
plan's protocols ask for (it runs them on shapes in a ``DealerContext``).

Party 0's share of everything comes from its seed; only party 1's
(and any one-party items) are stored, counted as offline bytes, and can be
written to safetensors files for a later run.

Freshness: every dealing has a label (random 128 bits unless the caller
names one) that the dealer refuses to deal twice in a deployment; dealt
material carries the label, the plan hash and the deployment id (a random
nonce made with the dealer seeds), and is refused by any other deployment
or plan. Each party is handed only its own share of the material.
"""
from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load, load_file, save, save_file

from ..backends import RingBackend, get_backend
from ..backends.prg import Prg, new_seed
from .context import payload_bytes
from .executor import execute
from .shape_context import DealerContext, Replay

__all__ = ["Dealer", "DealtMaterial", "MaterialStream", "MaterialFileError", "DealerError", "fresh_label"]


class MaterialFileError(ValueError):
    """A material file that does not belong to this plan or inference, or is damaged."""


class DealerError(ValueError):
    """A request the dealer refuses: a label dealt before in this deployment, or a malformed one."""


_LABEL = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
RESERVED_LABELS = frozenset({"deploy", "tag"})   # PRG names deploy/SCOPE and tag/LABEL are taken
TAG = "#tag"   # the stored item that binds dealt material to its label and seeds


def material_tag(seed: bytes, label: str) -> torch.Tensor:
    """What a party's share of material dealt under ``label`` must carry: a PRG
    output only the holder of its seed can make. An edited label, or material
    of another deployment, does not carry it."""
    return Prg(seed).ring(f"tag/{label}", (2,))


def fresh_label() -> str:
    """A random 128-bit label: what streamed runs and ``Dealer.deal()`` use."""
    return secrets.token_hex(16)


@dataclass
class DealtMaterial:
    """One inference's material, both parties' stored shares, and what it is bound to."""
    inference: str
    stored: tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]
    deployment: str
    plan: str
    materials: list = field(default_factory=list)
    offline_bytes: tuple[int, int] = (0, 0)

    def _tensors(self, party: int) -> tuple[dict, dict]:
        tensors = {f"{node}/{i}": t.cpu().contiguous() for node, items in self.stored[party].items()
                   for i, t in enumerate(items)}
        return tensors, {"plan": self.plan, "deployment": self.deployment, "inference": self.inference,
                         "party": str(party)}

    def save(self, party: int, path: str | Path) -> Path:
        """Party ``party``'s share only, with its label, plan hash and deployment id."""
        tensors, meta = self._tensors(party)
        save_file(tensors, str(path), metadata=meta)
        return Path(path)

    def to_bytes(self, party: int) -> bytes:
        """Party ``party``'s share as ``save`` writes it, in memory (what a live dealer sends)."""
        tensors, meta = self._tensors(party)
        return save(tensors, metadata=meta)

    @classmethod
    def load(cls, client_path: str | Path, server_path: str | Path, plan_hash: str) -> "DealtMaterial":
        """Both parties' files, as written by ``save``; they must be for the same plan, deployment and inference."""
        (inference0, deployment0), stored0 = cls.load_party(client_path, plan_hash, 0)
        (inference1, deployment1), stored1 = cls.load_party(server_path, plan_hash, 1)
        if (inference0, deployment0) != (inference1, deployment1):
            raise MaterialFileError(f"material files are for different inferences or deployments "
                                    f"({inference0!r} of {deployment0[:12]}, {inference1!r} of {deployment1[:12]})")
        return cls(inference0, (stored0, stored1), deployment0, plan_hash)

    @staticmethod
    def load_party(path: str | Path, plan_hash: str, party: int) -> tuple[tuple[str, str], dict[str, list[torch.Tensor]]]:
        """One party's file: ((label, deployment id), its stored items by node)."""
        try:
            from safetensors import safe_open
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
            tensors = load_file(str(path))
        except Exception as error:  # safetensors raises several kinds for damaged files
            raise MaterialFileError(f"{path}: not a readable material file ({error})") from None
        return DealtMaterial._party_items(str(path), tensors, meta, plan_hash, party)

    @staticmethod
    def party_from_bytes(data: bytes, plan_hash: str, party: int) -> tuple[tuple[str, str], dict]:
        """One party's share from ``to_bytes`` (a live dealer's message), checked as ``load_party`` checks a file."""
        try:
            tensors = load(bytes(data))
            meta = _safetensors_metadata(bytes(data))
        except Exception as error:
            raise MaterialFileError(f"dealer material that is not readable ({error})") from None
        return DealtMaterial._party_items("dealer material", tensors, meta, plan_hash, party)

    @staticmethod
    def _party_items(source: str, tensors: dict, meta: dict, plan_hash: str, party: int):
        if meta.get("plan") != plan_hash or meta.get("party") != str(party):
            raise MaterialFileError(f"{source}: material for plan {meta.get('plan', '?')[:12]} party "
                                    f"{meta.get('party')}, expected plan {plan_hash[:12]} party {party}")
        if not meta.get("deployment") or not meta.get("inference"):
            raise MaterialFileError(f"{source}: material without a deployment id or label; deal it again")
        items: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for key, tensor in tensors.items():
            node, index = key.rsplit("/", 1)
            items.setdefault(node, []).append((int(index), tensor))
        return (meta["inference"], meta["deployment"]), {node: [t for _, t in sorted(v)] for node, v in items.items()}


def _safetensors_metadata(data: bytes) -> dict:
    """The ``__metadata__`` of a safetensors buffer (its JSON header)."""
    import json
    import struct
    (length,) = struct.unpack_from("<Q", data, 0)
    return json.loads(data[8: 8 + length]).get("__metadata__", {}) or {}


LOOKAHEAD_BYTES = 96 << 20   # stored material the dealer may have made and the parties not yet taken


class _Progress:
    """What the dealer and both parties synchronise on; it holds no material."""

    def __init__(self, timeout: float, lookahead_bytes: int):
        self.timeout, self.lookahead_bytes = timeout, lookahead_bytes
        self.cond = threading.Condition()
        self.ready: set[str] = set()
        self.untaken = 0
        self.wanted: list[str] = []   # nodes parties wait for: while one is not dealt, the dealer goes on regardless
        self.most_ahead_bytes = 0
        self.done = self.cancelled = False
        self.error: BaseException | None = None


class PartyFeed:
    """One party's side of a ``MaterialStream``: its own stored items only."""

    def __init__(self, party: int, progress: _Progress):
        self.party, self.items, self._progress = party, {}, progress

    def take(self, node: str, index: int) -> torch.Tensor | None:
        """Item ``index`` of ``node`` (None when there is no such item), waiting
        until the dealer has published the node; one-time: the feed lets go of it."""
        progress = self._progress
        with progress.cond:
            # parties run independent nodes together, not in the dealer's order: while one waits for a
            # node, the dealer may not pause for the lookahead bound (it holds material of later nodes)
            progress.wanted.append(node)
            progress.cond.notify_all()
            try:
                ok = progress.cond.wait_for(lambda: node in progress.ready or progress.done or progress.cancelled,
                                            timeout=progress.timeout)
            finally:
                progress.wanted.remove(node)
            if progress.error is not None:
                raise RuntimeError(f"the dealer failed: {progress.error}")
            if progress.cancelled and node not in progress.ready:
                raise RuntimeError("the run stopped")
            if not ok:
                raise RuntimeError(f"no dealer material for {node} within {progress.timeout:.0f} s")
            pieces = self.items.get(node, [])
            if index >= len(pieces) or pieces[index] is None:
                return None
            piece, pieces[index] = pieces[index], None
            progress.untaken -= payload_bytes(piece)
            progress.cond.notify_all()
            return piece


class MaterialStream:
    """Material dealt in a background thread while the parties run: a party
    asking for a node's stored items waits until the dealer has published them.
    Each party reads through its own ``PartyFeed`` (``stream.feeds[party]``).

    The dealer stays at most ``lookahead_bytes`` of untaken material ahead of
    the parties (it finishes the node it is on), so memory stays bounded on
    deep models and the dealer does not take CPU from parties it is far ahead of.
    """

    def __init__(self, inference: str, timeout: float, lookahead_bytes: int = LOOKAHEAD_BYTES):
        self.inference = inference
        self._progress = _Progress(timeout, lookahead_bytes)
        self.feeds = (PartyFeed(0, self._progress), PartyFeed(1, self._progress))
        self.offline_bytes = (0, 0)
        self.seconds = 0.0           # the dealer's busy time (not counting pauses)
        self.paused_seconds = 0.0    # time the dealer waited for the parties to take material

    @property
    def stored(self) -> tuple[dict, dict]:
        return self.feeds[0].items, self.feeds[1].items

    @property
    def most_ahead_bytes(self) -> int:
        return self._progress.most_ahead_bytes

    def publish(self, node: str) -> None:
        """The dealer's side: ``node``'s items are complete; wait while too far ahead."""
        progress = self._progress
        size = sum(payload_bytes(t) for feed in self.feeds for t in feed.items.get(node, []))
        with progress.cond:
            progress.ready.add(node)
            progress.untaken += size
            progress.most_ahead_bytes = max(progress.most_ahead_bytes, progress.untaken)
            progress.cond.notify_all()
            start = time.perf_counter()
            ok = progress.cond.wait_for(lambda: progress.untaken <= progress.lookahead_bytes or progress.cancelled
                                        or any(n not in progress.ready for n in progress.wanted),
                                        timeout=progress.timeout)
            self.paused_seconds += time.perf_counter() - start
            if progress.cancelled:
                raise RuntimeError("the run stopped")
            if not ok:
                raise RuntimeError(f"the parties took no dealer material within {progress.timeout:.0f} s")

    def finish(self, error: BaseException | None = None) -> None:
        with self._progress.cond:
            self._progress.done, self._progress.error = True, error
            self._progress.cond.notify_all()

    def cancel(self) -> None:
        """The parties stopped: the dealer must not wait for them to take more, nor they for it."""
        with self._progress.cond:
            self._progress.cancelled = True
            self._progress.cond.notify_all()

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
    """Deals material for one plan and one deployment (fixed seeds, one deployment id)."""

    def __init__(self, plan, backend: str | RingBackend = "cpu", seeds: tuple[bytes, bytes] | None = None):
        self.plan = plan
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.seeds = seeds or (new_seed(), new_seed())
        self.deployment = secrets.token_hex(16)   # made with the seeds; material carries it
        self._labels: set[str] = set()            # every label dealt in this deployment
        self._lock = threading.Lock()             # guards the labels
        self._tape_lock = threading.Lock()        # one shape run per plan, even for concurrent dealings
        self._materials = None
        self.shape_run_seconds = 0.0   # the one-time shape run (with the first dealing), 0 when the plan had a tape
        self.scoped: dict = {}   # deployment-scoped masks, drawn once

    def _cached(self):
        tapes = self.plan.__dict__.setdefault("_dealer_tapes", {})  # per backend: fns close over its matmul
        return tapes, tapes.get(self._tape_key)

    @property
    def _tape_key(self):
        return self.backend.name, self.plan.frac_bits

    def deal_into(self, dealing: Replay) -> None:
        """Deal every node of the plan into ``dealing``.

        The plan's requests for randomness (its tape) are recorded once per
        plan object by a shape-only run and kept on the plan in memory. That
        first time, each node is dealt as soon as it is recorded: parties
        start on the first nodes' material without waiting for the whole
        shape run.
        """
        with self._tape_lock:
            tapes, cached = self._cached()
            if cached is None:
                cached = self._record_and_deal(tapes, dealing)
                self._materials = cached[1]
                return
        dealing.exported = cached[2]
        with torch.no_grad():
            dealing.tape(cached[0])
        self._materials = cached[1]

    def _record_and_deal(self, tapes, dealing: Replay):
        """The first dealing of a plan: its shape run, dealing each node as it is recorded."""
        start = time.perf_counter()
        ctx = DealerContext(self.backend, self.plan.frac_bits)
        dealing.exported = ctx.exported   # grows as nodes return wires, before each node is dealt
        done, dealing_seconds = [0], [0.0]

        def deal_recorded(node, seconds):
            if len(ctx.tape) > done[0]:
                begin = time.perf_counter()
                dealing.node(ctx.tape, done[0], len(ctx.tape))
                dealing_seconds[0] += time.perf_counter() - begin
            done[0] = len(ctx.tape)
        with torch.no_grad():
            execute(self.plan.graph, ctx, on_node=deal_recorded, overflow_check=self.plan.overflow_check)
        cached = tapes[self._tape_key] = (ctx.tape, ctx.materials, frozenset(ctx.exported))
        self.shape_run_seconds = time.perf_counter() - start - dealing_seconds[0]
        return cached

    def seed_for(self, party: int) -> bytes:
        """What the dealer gives a party once: its PRG seed."""
        return self.seeds[party]

    def claim(self, label: str) -> str:
        """Reserve ``label`` for one dealing; a label is dealt at most once per deployment."""
        if not isinstance(label, str) or not _LABEL.fullmatch(label) or label in RESERVED_LABELS:
            raise DealerError(f"a dealing label is 1-64 letters, digits, '_', '.' or '-' (not "
                              f"{', '.join(sorted(RESERVED_LABELS))}), not {label!r}")
        with self._lock:
            if label in self._labels:
                raise DealerError(f"label {label!r} was already dealt in this deployment; its masks must never be "
                                  f"used twice: deal with a new label (or none, for a random one)")
            self._labels.add(label)
        return label

    def deal(self, label: str | None = None) -> DealtMaterial:
        """Fresh material for one inference, under ``label`` (random 128 bits by default)."""
        label = self.claim(fresh_label() if label is None else label)
        dealing = Replay(self.backend, self.seeds, label, scoped=self.scoped)
        self.deal_into(dealing)
        for party in (0, 1):
            dealing.stored[party][TAG] = [material_tag(self.seeds[party], label)]
        return DealtMaterial(label, dealing.stored, self.deployment, self.plan.hash, self._materials,
                             tuple(dealing.offline))
