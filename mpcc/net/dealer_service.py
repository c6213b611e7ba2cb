"""The dealer as a network service, and the parties' side of talking to it.

The dealer serves one plan. Over a mutually authenticated connection:

- the server asks for a ``deploy``ment: fresh seeds and a deployment id; it
  gets its own seed and passes the id to its client;
- the client ``join``s that deployment (once, with a one-time token the server
  got with the deployment and passes on) and gets its own seed;
- before each run the server asks to ``deal``: the dealer picks a fresh
  label, deals the run's material, sends the server its share and keeps the
  client's until the client ``take``s it (once).

Each party gets only its own seed and share, and the role in its certificate
decides which requests it may make. A deployment ends when the server's
connection closes; material not taken by then is dropped.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from ..runtime.dealer import Dealer, DealtMaterial
from .certs import client_context, server_context
from .handshake import answer, hello_of, offer
from .link import Link, LinkError, connect
from .listener import Listener

__all__ = ["DealerService", "DealerLink", "DealerRefused"]

MAX_PENDING = 4          # client shares a deployment may have waiting (dealt, not yet taken)
DEAL_WAIT = 600.0        # seconds a party waits for a dealing (dealing a large plan takes a while)
MAX_CONNECTIONS = 256    # party connections the dealer serves at once


class DealerRefused(ConnectionError):
    """The dealer refused a request (an unknown deployment, material already taken, a wrong role)."""


@dataclass
class _Deployment:
    dealer: Dealer
    server: Link            # the connection that made it: only it may ask for dealings
    token: str              # what the client must show to join (the server passes it on, over TLS)
    client: Link | None = None   # the connection that joined it: only it may take the client's shares
    pending: dict = field(default_factory=dict)   # label -> the client's share (bytes)
    lock: threading.Lock = field(default_factory=threading.Lock)


class DealerService:
    """Deals for one plan to the parties that connect (see the module docstring).

    Example (one process, for tests; ``mpcc dealer PLAN --listen ...`` runs one):
        >>> service = DealerService(plan, ("127.0.0.1", 0), certs)        # doctest: +SKIP
        >>> threading.Thread(target=service.serve_forever).start()       # doctest: +SKIP
    """

    def __init__(self, plan, listen: tuple[str, int], certs, *, backend: str = "cpu", timeout: float = 60.0,
                 log=None):
        self.plan, self.backend, self.timeout = plan, backend, timeout
        self.log = log or (lambda line: None)
        self.listener = Listener(listen[0], listen[1], server_context(certs, "dealer"), ("client", "server"),
                                 timeout=timeout, on_refused=self.log)
        self.deployments: dict[str, _Deployment] = {}
        self.lock = threading.Lock()
        self.closed = False
        self.served = 0

    @property
    def address(self) -> tuple[str, int]:
        return self.listener.host, self.listener.port

    def serve_forever(self, max_connections: int | None = None) -> None:
        """Serve connections, each in a thread of its own, until ``close`` (or ``max_connections``)."""
        self.served += self.listener.serve(lambda link, number: self._serve(link), lambda: self.closed,
                                           limit=max_connections, at_once=MAX_CONNECTIONS, name="mpcc-dealer-conn")

    def close(self) -> None:
        self.closed = True
        self.listener.close()

    def _serve(self, link: Link) -> None:
        created: list[str] = []
        try:
            answer(link, hello_of(self.plan, "dealer"))
            while True:
                request = link.receive_json("hello", timeout=24 * 3600)   # a party may idle between runs
                op = request.get("op")
                handler = {("server", "deploy"): self._deploy, ("server", "deal"): self._deal,
                           ("client", "join"): self._join, ("client", "take"): self._take}.get((link.role, op))
                if op == "bye":
                    return
                if handler is None:
                    link.send_json("hello", {"error": f"a {link.role} may not ask {op!r}"})
                    continue
                try:
                    handler(link, request, created)
                except DealerRefused as refusal:
                    link.send_json("hello", {"error": str(refusal)})
        except Exception as error:   # a party that went away: log, end its deployments
            self.log(f"dealer: {link}: {type(error).__name__}: {error}")
        finally:
            with self.lock:
                for deployment in created:
                    self.deployments.pop(deployment, None)
            link.close()

    def _entry(self, request, link: Link | None = None) -> _Deployment:
        """The deployment a request names; with ``link``, only if that connection made or joined it."""
        with self.lock:
            entry = self.deployments.get(str(request.get("deployment")))
        if entry is None or (link is not None and link is not entry.server and link is not entry.client):
            raise DealerRefused(f"no deployment {str(request.get('deployment'))[:12]!r} here for this connection "
                                f"(it ended, another party made it, or another dealer did)")
        return entry

    def _deploy(self, link, request, created) -> None:
        dealer = Dealer(self.plan, self.backend)
        token = secrets.token_hex(16)
        with self.lock:
            self.deployments[dealer.deployment] = _Deployment(dealer, link, token)
        created.append(dealer.deployment)
        link.send_json("hello", {"deployment": dealer.deployment, "seed": dealer.seed_for(1).hex(), "token": token})
        self.log(f"dealer: deployment {dealer.deployment[:12]} for {link}")

    def _deal(self, link, request, created) -> None:
        entry = self._entry(request, link)
        with entry.lock:
            if len(entry.pending) >= MAX_PENDING:
                raise DealerRefused(f"{len(entry.pending)} dealings wait for the client to take them")
        start = time.perf_counter()
        material = entry.dealer.deal()
        client_share = material.to_bytes(0)
        with entry.lock:
            entry.pending[material.inference] = client_share
        link.send_json("hello", {"label": material.inference})
        link.send_bytes("material", [material.to_bytes(1)])
        self.log(f"dealer: dealt {material.inference[:8]} of {entry.dealer.deployment[:12]} "
                 f"({sum(material.offline_bytes) / 1e6:.1f} MB, {time.perf_counter() - start:.2f} s)")

    def _join(self, link, request, created) -> None:
        entry = self._entry(request)
        with entry.lock:
            if entry.client is not None:
                raise DealerRefused("a client already joined this deployment")
            if not secrets.compare_digest(str(request.get("token", "")), entry.token):
                raise DealerRefused("wrong join token for this deployment (the server gives its client the token)")
            entry.client = link
        link.send_json("hello", {"seed": entry.dealer.seed_for(0).hex()})

    def _take(self, link, request, created) -> None:
        entry = self._entry(request, link)
        label = str(request.get("label"))
        with entry.lock:
            share = entry.pending.pop(label, None)
        if share is None:
            raise DealerRefused(f"no material {label[:12]!r} waits for this client (never dealt, or taken)")
        link.send_json("hello", {"label": label})
        link.send_bytes("material", [share])


def material_limit(plan) -> int:
    """The most one party's share of a run can take: the plan's material (both parties'), plus
    room for the file's header; worked out once per plan (a cost run)."""
    cached = plan.__dict__.get("_material_limit")
    if cached is None:
        cached = plan.__dict__["_material_limit"] = int(plan.cost().offline_bytes * 1.05) + (4 << 20)
    return cached


def _seed(text: str) -> bytes:
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise LinkError("the dealer sent a seed that is not 32 bytes")
    return seed


class DealerLink:
    """A party's connection to the dealer service."""

    def __init__(self, address: tuple[str, int], certs, role: str, plan, timeout: float = 60.0):
        self.role, self.plan = role, plan
        self.material_limit = material_limit(plan)
        self.link = connect(address[0], address[1], client_context(certs, role), "dealer", timeout=timeout)
        try:
            offer(self.link, hello_of(plan, role))
        except Exception:
            self.link.close()
            raise

    def _ask(self, request: dict, wait: float | None = None, *fields: str) -> dict:
        self.link.send_json("hello", request)
        reply = self.link.receive_json("hello", timeout=wait)
        if "error" in reply:
            raise DealerRefused(f"the dealer refused {request['op']!r}: {reply['error']}")
        missing = [f for f in fields if not isinstance(reply.get(f), str)]
        if missing:
            raise LinkError(f"the dealer answered {request['op']!r} without {', '.join(missing)}")
        return reply

    def deploy(self) -> tuple[str, bytes, str]:
        """(deployment id, this server's seed, the token its client joins with)."""
        reply = self._ask({"op": "deploy"}, None, "deployment", "seed", "token")
        return reply["deployment"], _seed(reply["seed"]), reply["token"]

    def join(self, deployment: str, token: str) -> bytes:
        """This client's seed for ``deployment`` (``token``: from the server)."""
        return _seed(self._ask({"op": "join", "deployment": deployment, "token": token}, None, "seed")["seed"])

    def _material(self, label: str, deployment: str, party: int) -> dict:
        data = self.link.receive_bytes("material", max_length=self.material_limit)
        (got_label, got_deployment), stored = DealtMaterial.party_from_bytes(data, self.plan.hash, party)
        if (got_label, got_deployment) != (label, deployment):
            raise LinkError(f"the dealer sent material {got_label[:12]!r} of {got_deployment[:12]}, asked for "
                            f"{label[:12]!r} of {deployment[:12]}")
        return stored

    def deal(self, deployment: str) -> tuple[str, dict]:
        """A fresh label and this server's share of its material."""
        label = self._ask({"op": "deal", "deployment": deployment}, DEAL_WAIT, "label")["label"]
        return label, self._material(label, deployment, 1)

    def take(self, deployment: str, label: str) -> dict:
        """This client's share of ``label``'s material."""
        self._ask({"op": "take", "deployment": deployment, "label": label}, None, "label")
        return self._material(label, deployment, 0)

    def close(self) -> None:
        try:
            self.link.send_json("hello", {"op": "bye"})
        except Exception:
            pass
        self.link.close()

