"""The client party over the network: ``mpcc.connect(...)`` returns a session
whose ``run(inputs)`` gives ``(outputs, stats)``, as ``mpcc.Session`` does
in one process. The client's inputs never leave it except as shares; public
inputs (known to both) are sent to the server, which checks them.
"""
from __future__ import annotations

import time

from ..backends import get_backend
from ..runtime.context import SessionState
from ..runtime.session import RunError, RunStats, check_client_inputs
from .certs import client_context
from .material import LABEL, FileMaterial, LiveClientMaterial
from .handshake import HandshakeError, hello_of, offer
from .link import connect
from .parties import check_tag, encode_tensors, run_party

__all__ = ["ClientSession"]


class ClientSession:
    """A connection to a server that runs ``plan``, and a deployment with it.

    Example:
        >>> with mpcc.connect(plan, ("127.0.0.1", 7001), "certs", dealer=("127.0.0.1", 7000)) as client:
        ...     outputs, stats = client.run({"input_ids": ids})                  # doctest: +SKIP
    """

    def __init__(self, plan, address: tuple[str, int], certs, dealer: tuple[str, int] | None = None, *,
                 material=None, backend: str = "cpu", timeout: float = 60.0, net=None):
        """``dealer``: the live dealer's address; or ``material``: the client's directory of
        material dealt ahead (``mpcc dealer PLAN --out DIR``)."""
        if (dealer is None) == (material is None):
            raise RunError("give the client a live dealer's address or a directory of material dealt ahead "
                           "(one of them)")
        self.plan, self.backend, self.net = plan, get_backend(backend), net
        self.source = FileMaterial(material, plan, 0) if material is not None else None
        self.link = connect(address[0], address[1], client_context(certs, "client"), "server", timeout=timeout)
        try:
            extra = {"deployment": self.source.deployment} if self.source is not None else {}
            reply = offer(self.link, hello_of(plan, "client", **extra))
            self.deployment = str(reply.get("deployment", ""))
            if not self.deployment or (self.source is not None and self.deployment != self.source.deployment):
                raise HandshakeError(f"{self.link} named deployment {self.deployment[:12] or 'none'}")
            if self.source is None:
                self.source = LiveClientMaterial(dealer, certs, plan, self.deployment, str(reply.get("token", "")),
                                                 timeout)
            self.seed = self.source.seed
        except BaseException:
            self.close()
            raise
        self.state = SessionState(static=plan.graph.static_values())
        self.runs = 0
        self.last_label: str | None = None   # the label of the last run's material (used: never again)

    def run(self, inputs):
        """One private inference: ``(outputs, stats)``, the outputs in plan order. A failure
        raises and ends the session (connect again: a new deployment)."""
        inputs = check_client_inputs(self.plan, inputs)   # before anything is sent
        public = {n.name: inputs[n.name] for n in self.plan.graph.inputs if n.attrs.get("owner") == "public"}
        start = time.perf_counter()
        try:
            self.link.send_json("hello", {"op": "run"}, step=self.runs)
            if public:
                self.link.send_bytes("inputs", [encode_tensors(public)], step=self.runs)
            reply = self.link.receive_json("hello", step=self.runs)
            label = str(reply.get("label", ""))
            if reply.get("op") != "run" or reply.get("run") != self.runs or not LABEL.fullmatch(label):
                raise HandshakeError(f"{self.link} answered {reply}, expected run {self.runs} with a label")
            offline_start = time.perf_counter()
            stored = self.source.take_label(label)
            check_tag(stored, self.seed, label, "the dealer")
            offline_seconds = time.perf_counter() - offline_start
            forked = self.state.fork()
            outputs, link_stats, online_seconds = run_party(self.plan, 0, self.backend, self.link, self.runs, self.seed,
                                                            stored, forked, label, inputs, None, self.net)
        except BaseException:
            self.link.abort("failed")
            raise
        self.state = forked
        self.runs += 1
        self.last_label = label
        stats = RunStats((link_stats.bytes_sent, link_stats.bytes_received),
                         sum(t.numel() * t.element_size() for items in stored.values() for t in items),
                         link_stats.setup_bytes_sent + link_stats.setup_bytes_received, link_stats.rounds,
                         online_seconds, offline_seconds, time.perf_counter() - start, {},
                         (link_stats.wait_seconds, 0.0))
        return [outputs[name] for name in self.plan.graph.outputs], stats

    def close(self) -> None:
        """End the session (the server keeps serving others)."""
        if not self.link.closed:
            try:
                self.link.send_json("hello", {"op": "bye"}, step=self.runs if hasattr(self, "runs") else 0)
            except Exception:
                pass
            self.link.close()
        if self.source is not None:
            self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

