"""What two peers agree on before any secret moves.

Each side sends a ``hello`` frame (JSON): the protocol version, its role,
the plan hash (which covers the graph and every numeric setting), the
fixed-point settings and, for pre-dealt material, the deployment id. Each
side compares the peer's hello with its own and refuses any mismatch with an
error that names both values; the refusing side tells its peer which field
differs (the fields are public: plan hashes, versions, settings), never its
own error text. The server runs one plan, which it checked and pinned at start.
"""
from __future__ import annotations

from ..plan import PROTOCOL_VERSION
from .link import Link

__all__ = ["HandshakeError", "hello_of", "offer", "answer", "RING_BITS"]

RING_BITS = 64
FIELDS = ("protocol", "ring_bits", "frac_bits", "plan")


class HandshakeError(ConnectionError):
    """The peers disagree on the plan, the protocol version, the fixed point or the material."""


def hello_of(plan, role: str, **extra) -> dict:
    """This side's hello for ``plan``."""
    return {"protocol": PROTOCOL_VERSION, "role": role, "ring_bits": RING_BITS, "frac_bits": plan.frac_bits,
            "plan": plan.hash, **extra}


def _mismatch(mine: dict, theirs: dict) -> str | None:
    for field in FIELDS:
        if mine.get(field) != theirs.get(field):
            return field
    return None


def _describe(field: str, mine, theirs, peer) -> str:
    show = (lambda v: str(v)[:12]) if field == "plan" else str
    what = {"protocol": "protocol version", "ring_bits": "ring size (bits)", "frac_bits": "fixed-point fraction bits",
            "plan": "plan hash"}[field]
    return f"{peer} has {what} {show(theirs)}, this side {show(mine)}"


def offer(link: Link, hello: dict) -> dict:
    """The connecting side: send our hello, get the peer's; a refusal or mismatch raises."""
    link.send_json("hello", hello)
    reply = link.receive_json("hello")
    if reply.get("refused"):
        field = reply.get("refused")
        if field in FIELDS:
            raise HandshakeError(f"refused by {link}: {_describe(field, hello.get(field), reply.get(field), link)}")
        raise HandshakeError(f"refused by {link}: {reply.get('reason', 'no reason given')}")
    field = _mismatch(hello, reply)
    if field is not None:
        raise HandshakeError(f"handshake with {link}: {_describe(field, hello.get(field), reply.get(field), link)}")
    return reply


def answer(link: Link, hello: dict, extra=None, check=None) -> dict:
    """The accepting side: get the peer's hello, check it against ours (and ``check(theirs)``,
    which returns a public reason to refuse, or None), reply with ``extra`` (a dict, or a
    function called only once the peer passed: costly set-up waits for a good hello)."""
    theirs = link.receive_json("hello")
    field = _mismatch(hello, theirs)
    if field is not None:
        link.send_json("hello", {**hello, "refused": field})
        raise HandshakeError(f"refused {link}: {_describe(field, hello.get(field), theirs.get(field), link)}")
    reason = check(theirs) if check is not None else None
    if reason is not None:
        link.send_json("hello", {**hello, "refused": "other", "reason": reason})
        raise HandshakeError(f"refused {link}: {reason}")
    link.send_json("hello", {**hello, **((extra() if callable(extra) else extra) or {})})
    return theirs
