"""Running a plan: both parties for real, in one process, one thread each.

Each party's thread sees only its own inputs or weights, its dealer seed and
stored material, and the messages it receives. A ``Session`` is one
deployment: the server's masked weights are sent once and reused.

The server side checks the plan before anything runs (``policy.accept_plan``).
A run works on copies of both parties' deployment state and commits them only
when both parties finished: a failed run leaves the session usable. Runs of
one session are serialised.
"""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from ..backends import RingBackend, get_backend
from ..interpreter import check_inputs, check_weights, normalize_weights
from .context import PartyContext, PeerAborted, SessionState
from .cost import op_family
from .dealer import LOOKAHEAD_BYTES, TAG, Dealer, DealtMaterial, MaterialStream, fresh_label, material_tag
from .executor import execute
from .policy import PlanRefused, accept_plan
from .transport import open_channel

__all__ = ["Session", "RunStats", "run", "RunError", "PlanRefused"]

INTERRUPT_GRACE_SECONDS = 5.0   # how long Ctrl-C waits for the party threads to stop


class RunError(RuntimeError):
    """Inputs, weights or the run itself failed; raised before any secret is shared where possible.
    ``party_errors``: what each party raised (client, server), kept on this side only."""

    def __init__(self, message: str, party_errors: tuple = (None, None)):
        super().__init__(message)
        self.party_errors = party_errors


@dataclass
class RunStats:
    online_bytes: tuple[int, int] = (0, 0)      # sent by client, by server
    offline_bytes: int = 0                      # dealer material stored/sent
    setup_bytes: int = 0                        # once per deployment (masked weights)
    rounds: int = 0
    online_seconds: float = 0.0     # wall time of the two parties (the dealer runs beside them)
    offline_seconds: float = 0.0    # the dealer's busy time (overlapping the online phase)
    total_seconds: float = 0.0      # the whole run call
    by_family: dict = field(default_factory=dict)   # family -> {"seconds", "bytes"}
    wait_seconds: tuple[float, float] = (0.0, 0.0)  # time each party spent blocked on the other
    dealer_ahead_bytes: int = 0     # the most material the dealer had made that the parties had not yet taken

    @property
    def online_bytes_total(self) -> int:
        return sum(self.online_bytes)

    def as_dict(self) -> dict:
        return {"online_bytes_client": self.online_bytes[0], "online_bytes_server": self.online_bytes[1],
                "online_bytes_total": self.online_bytes_total, "offline_bytes": self.offline_bytes,
                "setup_bytes": self.setup_bytes, "rounds": self.rounds, "online_seconds": round(self.online_seconds, 4),
                "offline_seconds": round(self.offline_seconds, 4), "total_seconds": round(self.total_seconds, 4),
                "wait_seconds": [round(w, 4) for w in self.wait_seconds], "dealer_ahead_bytes": self.dealer_ahead_bytes,
                "by_family": self.by_family}

    def summary(self) -> str:
        lines = [f"total {self.total_seconds:.3f} s (parties {self.online_seconds:.3f} s, dealer busy "
                 f"{self.offline_seconds:.3f} s beside them), rounds {self.rounds}, online {self.online_bytes_total / 1e6:.2f} MB "
                 f"(client {self.online_bytes[0] / 1e6:.2f}, server {self.online_bytes[1] / 1e6:.2f}), "
                 f"offline {self.offline_bytes / 1e6:.2f} MB, setup {self.setup_bytes / 1e6:.2f} MB (once)"]
        for family, entry in sorted(self.by_family.items(), key=lambda kv: -kv[1]["seconds"]):
            lines.append(f"  {family:14} {entry['seconds']:8.3f} s  {entry['bytes'] / 1e6:9.3f} MB")
        return "\n".join(lines)


def _check_token_ids(plan, inputs):
    for node in plan.graph.nodes:
        if node.op == "one_hot" and plan.graph[node.operands[0]].op == "input" and node.operands[0] in inputs:
            ids = inputs[node.operands[0]]
            classes = node.attrs["num_classes"]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= classes):
                raise RunError(f"input {node.operands[0]!r}: token ids must lie in [0, {classes}); "
                               f"got {int(ids.min())}..{int(ids.max())}")


class Session:
    """One deployment of a plan: the server's weights, a dealer, both parties.

    Example:
        >>> import torch, mpcc
        >>> layer = torch.nn.Linear(4, 2)
        >>> plan = mpcc.compile(layer, {"input": torch.zeros(1, 4)})
        >>> session = mpcc.Session(plan, layer.state_dict())
        >>> out, stats = session.run({"input": torch.ones(1, 4)})
        >>> bool((out[0] - layer(torch.ones(1, 4))).abs().max() < 1e-3)
        True
    """

    def __init__(self, plan, weights: Mapping[str, torch.Tensor], *, backend: str | RingBackend = "cpu",
                 timeout: float = 120.0, progress: bool | None = None, lookahead_bytes: int = LOOKAHEAD_BYTES,
                 pinned: Iterable[str] | None = None, transport: str | None = None):
        """``pinned``: hashes of the plans this server accepts (those it compiled);
        without it the server still lints the plan and enforces the reveal policy.
        ``transport``: how the two party threads talk, ``"inprocess"`` (queues) or
        ``"tls"`` (a TLS connection on 127.0.0.1); default ``MPCC_TRANSPORT`` or in-process."""
        try:
            accept_plan(plan, pinned)
        except PlanRefused as error:
            raise RunError(f"the server refuses this plan: {error}") from None
        self.plan = plan
        self.plan_hash = plan.hash
        self.backend = get_backend(backend) if isinstance(backend, str) else backend
        self.weights = checked_weights(plan, weights)
        self.dealer = Dealer(plan, self.backend)  # its one-time shape run goes along with the first dealing
        static = plan.graph.static_values()
        self.states = (SessionState(static=static), SessionState(static=static))
        self.timeout = timeout
        self.transport = transport
        self.lookahead_bytes = lookahead_bytes   # how far the dealer may run ahead of the parties (memory)
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.count = 0                   # runs attempted
        self.used: set[str] = set()      # labels of material consumed (a failed run consumes its material too)
        self.record_views = False        # tests: keep every Opening each party receives in ``self.views``
        self.views: tuple[list, list] = ([], [])
        self._lock = threading.Lock()

    def run(self, inputs, *, material: DealtMaterial | None = None):
        """Run one private inference; returns ``(outputs, stats)`` (the client's outputs).

        ``inputs``: a dict by input name, or a tuple in the plan's input order
        (the forms ``mpcc.compile`` takes). ``material``: dealer material made
        ahead for this deployment (``session.dealer.deal()``, possibly saved and
        loaded); by default the dealer deals it now under a fresh random label.
        """
        inputs = check_client_inputs(self.plan, inputs)
        if material is not None:
            self._check_material(material)
        with self._lock:   # one run at a time: the deployment state is committed between runs
            return self._run_locked(inputs, material)

    def _check_material(self, material: DealtMaterial) -> None:
        """Material of another deployment or plan, or whose label was edited, is refused
        before use (material used before is refused under the run lock). Each party's
        share must carry the tag its own seed makes for the label."""
        if not isinstance(material, DealtMaterial):
            raise RunError(f"material must be DealtMaterial (from session.dealer.deal() or DealtMaterial.load), "
                           f"not {type(material).__name__}")
        if material.plan != self.plan_hash:
            raise RunError(f"dealer material {material.inference!r} is for plan {str(material.plan)[:12]}, "
                           f"this session runs plan {self.plan_hash[:12]}")
        if material.deployment != self.dealer.deployment:
            raise RunError(f"dealer material {material.inference!r} belongs to another deployment "
                           f"({str(material.deployment)[:12]}); deal it with this session's dealer")
        for party in (0, 1):
            tag = material.stored[party].get(TAG, [None])[0]
            expected = material_tag(self.dealer.seed_for(party), material.inference)
            if tag is None or not torch.equal(tag.cpu(), expected):
                raise RunError(f"dealer material {material.inference!r}: the {('client', 'server')[party]}'s share "
                               f"was not dealt under this label by this deployment's dealer (edited or mixed up)")

    def _run_locked(self, inputs, material):
        party_inputs = split_inputs(self.plan, inputs)
        start = time.perf_counter()
        self.count += 1
        dealer_thread = None
        if material is None:  # deal while the parties run: they wait only for material not yet made
            material = MaterialStream(self.dealer.claim(fresh_label()), self.timeout, self.lookahead_bytes)
            dealer_thread = material.start(self.dealer)
            own_material = material.feeds
        else:
            if material.inference in self.used:   # under the lock: two runs cannot both take it
                raise RunError(f"dealer material {material.inference!r} was already used; one-time material must not "
                               f"be reused")
            own_material = material.stored
        self.used.add(material.inference)
        states = (self.states[0].fork(), self.states[1].fork())
        self.views = ([], []) if self.record_views else (None, None)
        try:
            channel = open_channel(self.transport, self.timeout)
        except Exception as error:
            if dealer_thread is not None:
                material.cancel()
            raise RunError(f"cannot open the parties' channel: {error}") from None
        results: list = [None, None]
        errors: list = [None, None]
        timings: list[dict] = [{}, {}]

        def party_main(party: int):
            endpoint = channel.endpoints[party]
            ctx = PartyContext(party, self.backend, self.plan.frac_bits, endpoint, self.dealer.seed_for(party),
                               own_material[party], states[party], material.inference, self.views[party])

            def on_node(node, seconds):
                entry = timings[party].setdefault(op_family(node.op), {"seconds": 0.0, "bytes": 0})
                entry["seconds"] += seconds
                entry["bytes"] += ctx.sent_by_node.get(node.name, 0)
                if bar is not None and party == 0:
                    bar.advance(task)
            try:
                with torch.no_grad():
                    results[party] = execute(self.plan.graph, ctx, party_inputs[party],
                                             self.weights if party == 1 else None, on_node=on_node,
                                             overflow_check=self.plan.overflow_check)
            except BaseException as error:  # the peer must not wait for a dead party, nor the dealer
                errors[party] = error
                endpoint.abort("failed")    # a generic code: the details stay on this side
                if dealer_thread is not None:
                    material.cancel()

        bar = task = None
        if self.progress:
            from rich.progress import Progress
            bar = Progress(transient=True)
            task = bar.add_task("secure inference", total=len(self.plan.graph.nodes))
            bar.start()
        online_start = time.perf_counter()
        threads_before = torch.get_num_threads()
        torch.set_num_threads(max(1, threads_before // 2))  # one party per core rather than four threads on two
        threads = [threading.Thread(target=party_main, args=(p,), name=f"mpcc-party-{p}", daemon=True) for p in (0, 1)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        except KeyboardInterrupt:   # Ctrl-C: wake both parties and the dealer, wait briefly, re-raise
            channel.interrupt()
            if dealer_thread is not None:
                material.cancel()
            deadline = time.perf_counter() + INTERRUPT_GRACE_SECONDS
            for thread in threads:
                thread.join(max(0.0, deadline - time.perf_counter()))
            raise
        finally:
            torch.set_num_threads(threads_before)
            channel.close()
            if bar is not None:
                bar.stop()
        if dealer_thread is not None:
            dealer_thread.join()
        online_seconds = time.perf_counter() - online_start
        offline_seconds = getattr(material, "seconds", 0.0)
        failed = [p for p in (0, 1) if errors[p] is not None]
        if failed:   # the deployment state stays as it was: the next run starts from there
            party = next((p for p in failed if not _caused_by_peer(errors[p])), failed[0])
            raise RunError(f"{('client', 'server')[party]} failed: {errors[party]}",
                           tuple(errors)) from errors[party]
        self.states = states   # both parties finished: commit the deployment state
        links = [e.stats for e in channel.endpoints]
        families = {}
        for party in (0, 1):
            for family, entry in timings[party].items():
                target = families.setdefault(family, {"seconds": 0.0, "bytes": 0})
                target["seconds"] = max(target["seconds"], entry["seconds"])
                target["bytes"] += entry["bytes"]
        stats = RunStats((links[0].bytes_sent, links[1].bytes_sent), sum(material.offline_bytes),
                         links[0].setup_bytes_sent + links[1].setup_bytes_sent, max(l.rounds for l in links),
                         online_seconds, offline_seconds, time.perf_counter() - start, families,
                         (links[0].wait_seconds, links[1].wait_seconds), getattr(material, "most_ahead_bytes", 0))
        outputs = [results[0][name] for name in self.plan.graph.outputs]
        return outputs, stats


def checked_weights(plan, weights) -> dict:
    """The server's weights by key, checked against the plan (shapes, NaN, inf, fixed-point
    magnitude, keys the model did not have); a ``RunError`` says what is wrong."""
    try:
        weights = normalize_weights(weights)   # numpy arrays too
        check_weights(plan.graph, weights, frac_bits=plan.frac_bits)   # also NaN, inf and magnitude
    except Exception as error:
        raise RunError(str(error)) from None
    known = set(plan.info.get("unused_weights", [])) | set(plan.weight_keys)
    extra = sorted(set(weights) - known)
    if extra:
        raise RunError(f"weights the plan does not use and the model did not have: {extra[:5]}"
                       f"{' ...' if len(extra) > 5 else ''}")
    return weights


def check_client_inputs(plan, inputs, names=None) -> dict:
    """The inputs by name, checked (names, shapes, ranges, token ids) before anything is shared;
    ``names``: only these inputs (the server checks the public inputs a client sends it)."""
    inputs = inputs_as_dict(plan, inputs) if names is None else dict(inputs)
    try:
        check_inputs(plan.graph, inputs, plan.info.get("input_ranges"), names)
    except Exception as error:
        raise RunError(str(error)) from None
    _check_token_ids(plan, inputs)
    return inputs


def inputs_as_dict(plan, inputs) -> dict:
    """Inputs by name from the forms ``mpcc.compile`` takes (a dict, a tuple in the
    plan's input order, or one tensor); a wrong form is a ``RunError``."""
    names = [n.name for n in plan.graph.inputs]
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != len(names):
            raise RunError(f"the plan takes {len(names)} positional input(s) {names}, got {len(inputs)}")
        return dict(zip(names, inputs))
    if isinstance(inputs, torch.Tensor) and len(names) == 1:
        return {names[0]: inputs}
    if not isinstance(inputs, Mapping):
        raise RunError(f"inputs must be a dict by name or a tuple in the order {names}, "
                       f"not {type(inputs).__name__}")
    return dict(inputs)


def split_inputs(plan, inputs: dict) -> tuple[dict, dict]:
    """(the client's, the server's) inputs: each party gets its own and the public ones."""
    owners = plan.inputs
    return ({k: v for k, v in inputs.items() if owners[k] in ("client", "public")},
            {k: v for k, v in inputs.items() if owners[k] in ("server", "public")})


def _caused_by_peer(error: BaseException | None) -> bool:
    """The party stopped because its peer did (a ``PeerAborted`` anywhere in the chain)."""
    while error is not None:
        if isinstance(error, PeerAborted):
            return True
        error = error.__cause__
    return False


def run(plan, inputs: Mapping[str, torch.Tensor], weights: Mapping[str, torch.Tensor], **options):
    """Run ``plan`` once as a real two-party computation in this process.

    Args:
        plan: from ``mpcc.compile`` or ``mpcc.load``.
        inputs: the model inputs by name (each goes only to its owner's thread).
        weights: the model's ``state_dict()`` (only the server's thread sees it).
        **options: ``backend`` ("cpu", "limb", "cuda"), ``timeout`` (seconds any wait may take),
            ``transport`` ("inprocess", or "tls": the parties talk over TLS on 127.0.0.1),
            ``progress``, ``lookahead_bytes`` (how much material the dealer may make ahead of the
            parties; bounds memory), ``pinned`` (plan hashes the server accepts).

    Returns:
        ``(outputs, stats)``: the client's outputs in plan order and a ``RunStats``.
    """
    return Session(plan, weights, **options).run(inputs)
