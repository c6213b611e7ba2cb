"""The accepting side of TLS connections: a listening socket whose connections
become ``Link``s once their TLS handshake and the peer's role check pass, and
the accept loop the server and the dealer share.

TLS starts after accept, on a raw connection that reads nothing first (its
first bytes are the handshake): a failed handshake (a wrong certificate, a
plain-TCP client, a port scan) is then ours to report; asyncio's own
server-side TLS drops it silently.
"""
from __future__ import annotations

import asyncio
import ssl
import threading
from typing import Callable

from .certs import peer_role
from .link import EventLoopThread, Link

__all__ = ["Listener"]


class _Unread(asyncio.Protocol):
    """An accepted TCP connection before TLS: reads nothing (its first bytes are the TLS handshake)."""

    def __init__(self, listener: "Listener"):
        self.listener = listener

    def connection_made(self, transport) -> None:
        transport.pause_reading()
        asyncio.ensure_future(self.listener._handle(transport))


class Listener:
    """A TLS server socket: ``accept()`` returns the next authenticated connection of the expected roles.
    Handshakes that fail (a wrong certificate, a plain-TCP client) are reported to ``on_refused`` and
    the listener goes on."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, roles: tuple[str, ...], *,
                 timeout: float = 30.0, on_refused: Callable[[str], None] | None = None, reuse_port: bool = False):
        self.io = EventLoopThread("mpcc-listen")
        self.roles, self.timeout = roles, timeout
        self.on_refused = on_refused or (lambda line: None)
        self.accepted: asyncio.Queue | None = None

        async def start():
            self.accepted = asyncio.Queue()
            return await self.io.loop.create_server(lambda: _Unread(self), host, port, reuse_port=reuse_port or None)
        self.context = context
        self.server = self.io.call(start(), 30)
        self.host, self.port = self.server.sockets[0].getsockname()[:2]

    async def _handle(self, transport) -> None:
        loop = asyncio.get_running_loop()
        address = transport.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if address else "?"
        reader = asyncio.StreamReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        try:
            tls = await asyncio.wait_for(loop.start_tls(transport, protocol, self.context, server_side=True,
                                                        ssl_handshake_timeout=self.timeout), self.timeout + 1)
        except Exception as error:   # a wrong certificate, plain TCP, a port scan: refuse, go on
            reason = getattr(error, "reason", None) or type(error).__name__
            self.on_refused(f"refused a connection from {peer}: TLS handshake failed ({reason})")
            transport.close()
            return
        protocol.connection_made(tls)
        writer = asyncio.StreamWriter(tls, protocol, reader, loop)
        role = peer_role(writer.get_extra_info("ssl_object"))
        if role not in self.roles:
            self.on_refused(f"refused a connection from {peer}: it presented a {role or 'non-mpcc'} certificate, "
                            f"expected {' or '.join(self.roles)}")
            writer.close()
            return
        await self.accepted.put(Link(self.io, reader, writer, peer, role, self.timeout))

    def accept(self, timeout: float | None = None) -> Link:
        """The next authenticated connection (``TimeoutError`` after ``timeout`` seconds)."""
        async def next_link():
            return await asyncio.wait_for(self.accepted.get(), timeout)
        try:
            return self.io.call(next_link())
        except asyncio.TimeoutError:
            raise TimeoutError(f"no connection within {timeout} s") from None

    def serve(self, handle, stopped, *, limit: int | None = None, at_once: int = 64, name: str = "mpcc-conn") -> int:
        """Accept connections until ``stopped()`` (or ``limit`` of them), each handled by
        ``handle(link, number)`` in a thread of its own; at most ``at_once`` at a time (more are
        refused, with a line to ``on_refused``). Waits for them at the end; returns how many."""
        threads: list[threading.Thread] = []
        served = 0
        while not stopped() and (limit is None or served < limit):
            try:
                link = self.accept(0.5)
            except TimeoutError:
                continue
            except Exception:
                if stopped():
                    break
                raise
            threads = [t for t in threads if t.is_alive()]
            if len(threads) >= at_once:
                self.on_refused(f"refused {link}: {len(threads)} connections are served (at most {at_once})")
                link.abort("refused")
                continue
            served += 1
            thread = threading.Thread(target=handle, args=(link, served), daemon=True, name=f"{name}-{served}")
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(self.timeout)
        return served

    def stop_listening(self) -> None:
        """Accept no more connections (those accepted keep the I/O loop)."""
        async def shut():
            self.server.close()
        try:
            self.io.call(shut(), 5)
        except Exception:
            pass

    def close(self) -> None:
        self.stop_listening()
        self.io.stop()
