"""The server party as a network service: it holds the weights, runs one plan,
and serves client sessions over mutually authenticated TLS.

A session is one client connection and one deployment (fresh seeds from the
dealer): the first run sends the masked weights, later runs reuse them. Each
run, the server asks the dealer for fresh material under a new label and
tells the client the label; the server decides what runs and what is opened,
the client decides nothing on its behalf. A failed run ends its session (the
client gets a generic abort, the details stay in the server's log) and the
server goes on with the next session; a client that reconnects gets a new
deployment, so no mask is ever used twice.
"""
from __future__ import annotations

import math
import threading
import time

from ..backends import get_backend
from ..runtime.context import SessionState
from ..runtime.policy import PlanRefused, accept_plan
from ..runtime.session import RunError, check_client_inputs, checked_weights
from .certs import server_context
from .material import FileMaterial, LiveServerMaterial, MaterialGone
from .handshake import HandshakeError, answer, hello_of
from .link import Link
from .listener import Listener
from .parties import check_tag, decode_tensors, run_party

__all__ = ["Server", "serve"]

IDLE_TIMEOUT = 600.0   # seconds a session may wait between runs
MAX_CONCURRENT = 64    # sessions served at once; more connections are refused


class Server:
    """Serves ``plan`` with ``weights`` on ``listen`` (see the module docstring).

    Example:
        >>> server = mpcc.serve(plan, weights, ("127.0.0.1", 0), "certs", dealer=("127.0.0.1", 7000),
        ...                     block=False)                                  # doctest: +SKIP
        >>> server.address                                                    # doctest: +SKIP
    """

    def __init__(self, plan, weights, listen: tuple[str, int], certs, dealer: tuple[str, int] | None = None, *,
                 material=None, backend: str = "cpu", timeout: float = 60.0, idle_timeout: float = IDLE_TIMEOUT,
                 net=None, log=None, reuse_port: bool = False, max_concurrent: int = MAX_CONCURRENT):
        """``dealer``: the live dealer's address; or ``material``: the server's directory of
        material dealt ahead (``mpcc dealer PLAN --out DIR``), one deployment for one client."""
        try:
            accept_plan(plan, {plan.hash})
        except PlanRefused as error:
            raise RunError(f"the server refuses this plan: {error}") from None
        server_inputs = [n.name for n in plan.graph.inputs if n.attrs.get("owner") == "server"]
        if server_inputs:
            raise RunError(f"inputs owned by the server ({server_inputs}) are not served over the network yet; "
                           f"make them weights or public inputs")
        if (dealer is None) == (material is None):
            raise RunError("give the server a live dealer's address or a directory of material dealt ahead "
                           "(one of them)")
        self.files = FileMaterial(material, plan, 1) if material is not None else None
        self.plan, self.weights = plan, checked_weights(plan, weights)
        self.backend = get_backend(backend)
        self.certs, self.dealer, self.timeout, self.idle_timeout = certs, dealer, timeout, idle_timeout
        self.net = net
        self.log = log or (lambda line: None)
        self.static = plan.graph.static_values()
        self.listener = Listener(listen[0], listen[1], server_context(certs, "server"), ("client",), timeout=timeout,
                                 on_refused=self.log, reuse_port=reuse_port)
        self.max_concurrent = max_concurrent
        self.sessions = 0
        self.runs = 0
        self.failures = 0
        self.closed = False

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.host, self.listener.port

    def serve_forever(self, max_sessions: int | None = None) -> None:
        """Serve sessions, each in a thread of its own (at most ``max_concurrent`` at once),
        until ``close`` (or ``max_sessions``)."""
        self.sessions += self.listener.serve(self.serve_session, lambda: self.closed, limit=max_sessions,
                                             at_once=self.max_concurrent, name="mpcc-session")

    def close(self) -> None:
        self.closed = True
        self.listener.close()

    def serve_session(self, link: Link, number: int = 0) -> None:
        """One client session; never raises (a failure is logged and ends the session)."""
        where = f"session {number} ({link.peer})"
        source = None
        try:
            if self.files is not None:   # one deployment dealt ahead: the client must hold its other half
                source = self.files

                def same_deployment(theirs):
                    if theirs.get("deployment") != source.deployment:
                        return (f"this server runs material dealt ahead for deployment {source.deployment[:12]}; the "
                                f"client has {str(theirs.get('deployment') or 'a live dealer')[:12]} (give the client "
                                f"that deployment's client directory)")
                answer(link, hello_of(self.plan, "server"), {"deployment": source.deployment}, same_deployment)
            else:
                def live(theirs):
                    if theirs.get("deployment"):
                        return "this server deals live: the client must use the dealer, not material dealt ahead"

                def deploy():   # only for a client whose hello passed: a deployment costs the dealer a dealing
                    nonlocal source
                    source = LiveServerMaterial(self.dealer, self.certs, self.plan, self.timeout)
                    return {"deployment": source.deployment, "token": source.token}
                answer(link, hello_of(self.plan, "server"), deploy, live)
            self.log(f"{where}: deployment {source.deployment[:12]}")
            state = SessionState(static=self.static)
            run_index = 0
            while True:
                request = link.receive_json("hello", step=run_index, timeout=self.idle_timeout)
                if request.get("op") == "bye":
                    self.log(f"{where}: closed by the client after {run_index} run(s)")
                    return
                if request.get("op") != "run":
                    raise HandshakeError(f"{link} asked {request.get('op')!r}, expected 'run' or 'bye'")
                state = self._run(link, source, state, run_index, where)
                run_index += 1
        except Exception as error:
            self.failures += 1
            self.log(f"{where}: failed: {type(error).__name__}: {error}")
            link.abort("no-material" if isinstance(error, MaterialGone) else "failed")   # a code: details stay here
        finally:
            if source is not None and source is not self.files:
                source.close()
            link.close()

    def _run(self, link, source, state, run_index, where):
        start = time.perf_counter()
        public_names = [n.name for n in self.plan.graph.inputs if n.attrs.get("owner") == "public"]
        inputs = {}
        if public_names:   # values both parties know: the client sends them, checked here as the client checks its own
            declared = {n.name: n for n in self.plan.graph.inputs}
            bound = sum(math.prod(declared[name].type.shape) * 8 for name in public_names) + (64 << 10)
            inputs = decode_tensors(link.receive_bytes("inputs", step=run_index, max_length=bound), public_names)
            inputs = check_client_inputs(self.plan, inputs, set(public_names))
        label, stored = source.take()
        check_tag(stored, source.seed, label, "the dealer")
        link.send_json("hello", {"op": "run", "label": label, "run": run_index}, step=run_index)
        forked = state.fork()
        _, stats, seconds = run_party(self.plan, 1, self.backend, link, run_index, source.seed, stored, forked, label,
                                      inputs,
                                      self.weights, self.net)
        self.runs += 1
        self.log(f"{where}: run {run_index} done in {time.perf_counter() - start:.2f} s ({seconds:.2f} s online), "
                 f"{stats.rounds} rounds, sent {stats.bytes_sent / 1e6:.2f} MB + {stats.setup_bytes_sent / 1e6:.2f} MB "
                 f"setup")
        return forked


def serve(plan, weights, listen: tuple[str, int], certs, dealer: tuple[str, int] | None = None, *,
          block: bool = True, max_sessions: int | None = None, **options) -> Server:
    """Serve ``plan`` to clients over TLS (``mpcc serve``); see ``Server``. With ``block=False`` the
    server runs in a background thread and is returned at once (``server.close()`` stops it)."""
    server = Server(plan, weights, listen, certs, dealer, **options)
    if block:
        try:
            server.serve_forever(max_sessions)
        finally:
            server.close()
    else:
        threading.Thread(target=server.serve_forever, args=(max_sessions,), daemon=True,
                         name="mpcc-server").start()
    return server
