"""Client, server and dealer as separate processes over mutually authenticated TLS.

    >>> dealer = mpcc.net.DealerService(plan, ("127.0.0.1", 7000), "certs")      # doctest: +SKIP
    >>> server = mpcc.serve(plan, weights, "127.0.0.1:7001", "certs", dealer="127.0.0.1:7000", block=False)  # doctest: +SKIP
    >>> with mpcc.connect(plan, "127.0.0.1:7001", "certs", dealer="127.0.0.1:7000") as client:  # doctest: +SKIP
    ...     outputs, stats = client.run({"input_ids": ids})
"""
from __future__ import annotations

from .certs import CertificateError, make_certs
from .client import ClientSession
from .dealer_service import DealerRefused, DealerService
from .handshake import HandshakeError
from .link import LinkError
from .material import MaterialGone, deal_to_files
from .server import Server
from .shaper import NetworkShaper

__all__ = ["serve", "connect", "Server", "ClientSession", "DealerService", "make_certs", "NetworkShaper",
           "LinkError", "HandshakeError", "DealerRefused", "CertificateError", "as_address", "deal_to_files",
           "MaterialGone"]


def as_address(address) -> tuple[str, int]:
    """``"HOST:PORT"`` or ``(host, port)`` as ``(host, port)``."""
    if isinstance(address, str):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"address {address!r}: expected HOST:PORT, such as 127.0.0.1:7001")
        return host.strip("[]"), int(port)
    host, port = address
    return str(host), int(port)


def _shaper(net):
    return None if net is None or isinstance(net, NetworkShaper) else NetworkShaper(net)


def serve(plan, weights, listen, certs, dealer=None, *, material=None, block: bool = True,
          max_sessions: int | None = None, net=None, **options) -> Server:
    """Serve ``plan`` with ``weights`` to clients on ``listen`` (``"HOST:PORT"``), asking the live
    ``dealer`` (``"HOST:PORT"``) for material, or taking it from ``material``, the server's directory
    of material dealt ahead (``mpcc dealer PLAN --out DIR``); ``certs``: the certificates directory
    (``mpcc certs``). ``net`` (``"wan"``,
    ``"100Mbps,40ms"``...) emulates a slower link on what the server receives (give the client the same). With ``block=False``
    the server runs in a background thread (``server.close()`` stops it). Options: ``backend``,
    ``timeout``, ``idle_timeout``, ``log`` (a function taking one line)."""
    from .server import serve as _serve
    return _serve(plan, weights, as_address(listen), certs, None if dealer is None else as_address(dealer),
                  material=material, block=block, max_sessions=max_sessions, net=_shaper(net), **options)


def connect(plan, address, certs, dealer=None, *, material=None, net=None, **options) -> ClientSession:
    """A client session with the server at ``address`` that runs ``plan``: ``.run(inputs)``
    returns ``(outputs, stats)``; ``.close()`` ends it (or use it in a ``with`` block). Material
    from the live ``dealer``, or ``material``: the client's directory dealt ahead. Options:
    ``backend``, ``timeout``."""
    return ClientSession(plan, as_address(address), certs, None if dealer is None else as_address(dealer),
                         material=material, net=_shaper(net), **options)
