"""One mutually authenticated TLS connection, driven by an asyncio event loop
in an I/O thread, with a blocking face for the party threads.

Why asyncio streams over Python's ``ssl``: one thread interleaves sending and
receiving on the TLS object (OpenSSL objects must not be used from two threads
at once), so an exchange sends and receives together and two large sends
cannot deadlock on socket buffers. Measured on loopback, 2 cores, both ways at
once: 420 MB/s per direction with TLS against 485 MB/s plain TCP between two
processes (docs/deployment.md). grpcio is not installed here and would add a
second framing layer around ours.

Every read waits at most ``timeout`` seconds; a body is read in chunks of
``CHUNK`` bytes, each with its own time-out, so a stalled peer is found within
the time-out even in a 400 MB message while a slow one still progresses.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import math
import ssl
import threading
import time

from ..runtime.context import PeerAborted, ProtocolError
from ..runtime.transport import ABORT_CODES
from . import frames
from .certs import peer_role
from .frames import FrameError, Piece

__all__ = ["EventLoopThread", "Link", "LinkError", "connect", "step_name"]

CHUNK = 4 << 20
ABORT_GRACE = 2.0   # seconds an aborting side waits for its peer to read the abort and close


def step_name(step: int) -> str:
    """A step id as people read it: runs of one session number their steps from ``run << 32``."""
    run, index = divmod(step, 1 << 32)
    return f"run {run} step {index}" if run else f"step {index}"


class LinkError(ProtocolError):
    """The connection failed: the peer closed it, stalled, or sent what this side did not expect."""


class EventLoopThread:
    """An event loop running in a daemon thread; ``call`` runs a coroutine there and waits."""

    def __init__(self, name: str = "mpcc-io"):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coroutine, timeout: float | None = None):
        if self.loop.is_closed() or not self.loop.is_running():
            coroutine.close()
            raise RuntimeError("the event loop is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise
        except KeyboardInterrupt:
            future.cancel()
            raise

    def stop(self) -> None:
        """Cancel whatever runs on the loop (callers waiting on it get an error, never a hang), then stop it."""
        if self.loop.is_running() and threading.current_thread() is not self.thread:
            async def cancel_all():
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            try:
                self.call(cancel_all(), 5)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


class Link:
    """A TLS connection to a peer of a known role. Blocking methods, safe from one thread at a time."""

    def __init__(self, io: EventLoopThread, reader, writer, peer: str, role: str, timeout: float,
                 owns_io: bool = False):
        self.io, self.reader, self.writer = io, reader, writer
        self.peer, self.role, self.timeout = peer, role, timeout
        self.owns_io = owns_io
        self.closed = False
        self.peer_gone = False        # the peer aborted, or the connection broke
        self.dirty = False            # a frame was cut short: the stream is out of frame
        self.busy = False             # a call is in flight (another thread may only close)

    def __repr__(self) -> str:
        return f"the {self.role} at {self.peer}"

    # --- blocking face
    def exchange(self, step: int, outgoing: list[Piece], incoming: list[Piece], what: str = "",
                 shaper=None) -> list:
        """Send this side's step message and receive the peer's at once; ``shaper`` (a
        ``NetworkShaper``) delivers the peer's as a slower, more distant link would. Packing and
        unpacking run in the calling (party) thread: the I/O loop, which a server's sessions
        share, only moves bytes."""
        descriptor = frames.describe(outgoing)
        payloads = frames.payload_views(outgoing)
        length = len(descriptor) + sum(len(p) for p in payloads)
        expected = frames.describe(incoming)
        size = sum(p.size for p in incoming)
        body = self._call(self._exchange(step, [frames.header("step", step, length), descriptor, *payloads], length,
                                         expected, len(expected) + size, size, what, shaper), what)
        if bytes(body[: len(expected)]) != expected:
            raise LinkError(f"{step_name(step)}{f' ({what})' if what else ''}: {self} sent tensors "
                            f"{frames.shapes_in(bytes(body))}, expected {[tuple(p.tensor.shape) for p in incoming]} "
                            f"(or other widths or types)")
        return frames.decode_payloads(body, incoming, len(expected))

    def send_json(self, kind: str, value: dict, step: int = 0) -> None:
        self.send_bytes(kind, [frames.encode_json(value)], step)

    def receive_json(self, kind: str, step: int = 0, timeout: float | None = None) -> dict:
        body = self._call(self._receive(kind, step, None, timeout=timeout), kind, timeout)
        return frames.decode_json(body)

    def send_bytes(self, kind: str, parts: list, step: int = 0) -> None:
        length = sum(len(memoryview(p).cast("B")) for p in parts)
        self._call(self._send_bounded([frames.header(kind, step, length), *parts], length), kind)

    def receive_bytes(self, kind: str, step: int = 0, max_length: int | None = None) -> bytearray:
        return self._call(self._receive(kind, step, None, max_length=max_length), kind)

    def abort(self, code: str = "failed") -> None:
        """Tell the peer this side stopped (a generic code only), best effort, then close. The
        connection is closed only once the peer has read the abort (or after a grace period):
        closing with its data unread would reset the connection and could lose the abort."""
        if self.closed:
            return
        if self.peer_gone or self.dirty or self.busy:   # nothing to tell, or no whole frame can be sent now
            self.close()
            return
        body = code.encode()

        async def tell():
            await self._send([frames.header("abort", 0, len(body)), body])
            try:
                while await asyncio.wait_for(self.reader.read(1 << 16), ABORT_GRACE):
                    pass   # what the peer still sends is dropped until it closes
            except Exception:
                pass
        try:
            self.io.call(tell(), ABORT_GRACE + 2.0)
        except Exception:
            pass
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True

        async def shut():
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), 1.0)
            except Exception:
                pass
        try:
            self.io.call(shut(), 2.0)
        except Exception:
            pass
        if self.owns_io:
            self.io.stop()

    def _call(self, coroutine, what: str, timeout: float | None = None):
        if self.closed:
            coroutine.close()
            raise LinkError(f"the connection to {self} is closed")
        limit = None if timeout is None else timeout + 5.0   # the coroutine's own time-outs come first
        self.busy = True
        try:
            return self.io.call(coroutine, limit)
        except concurrent.futures.TimeoutError:
            raise LinkError(f"{what}: no answer from {self} within {timeout:.0f} s") from None
        except (concurrent.futures.CancelledError, asyncio.CancelledError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and not self.io.loop.is_closed():
                raise
            raise LinkError(f"{what}: the connection to {self} was closed on this side") from None
        finally:
            self.busy = False

    def _broken(self, what: str, error: OSError) -> LinkError:
        """The error for a connection that broke under ``what`` (a reset, a TLS failure)."""
        self.peer_gone = True
        return LinkError(f"{what}: the connection to {self} failed ({type(error).__name__})")

    # --- coroutines on the I/O loop
    async def _send(self, parts) -> None:
        """Write ``parts`` in chunks of at most ``CHUNK`` bytes (a TLS write takes at most 2 GiB), waiting
        for each to drain: a large message never sits whole in the transport's buffer."""
        for part in parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), CHUNK):
                self.writer.write(view[start: start + CHUNK])
                await self.writer.drain()
        await self.writer.drain()

    async def _send_bounded(self, parts, length: int) -> None:
        """``_send`` within the time-out (plus a second per MB: a peer must take at least 1 MB/s)."""
        limit = self.timeout + length / 1e6
        try:
            await asyncio.wait_for(self._send(parts), limit)
        except asyncio.TimeoutError:
            raise LinkError(f"{self} took no data within {limit:.0f} s") from None
        except OSError as error:
            raise self._broken("sending", error) from None

    async def _read(self, count: int, what: str, timeout: float) -> bytes:
        try:
            return await asyncio.wait_for(self.reader.readexactly(count), timeout)
        except asyncio.TimeoutError:
            raise LinkError(f"{what}: no data from {self} within {timeout:.0f} s") from None
        except asyncio.IncompleteReadError:
            self.peer_gone = True
            raise LinkError(f"{what}: {self} closed the connection") from None
        except OSError as error:
            raise self._broken(what, error) from None

    async def _receive(self, kind: str, step: int, length: int | None, *, max_length: int | None = None,
                       what: str = "", timeout: float | None = None, shaper=None, payload: int = 0) -> bytearray:
        """The body of the next frame, which must be ``kind`` (an abort raises ``PeerAborted``) at ``step``,
        of exactly ``length`` bytes (or at most ``max_length``), read in chunks. ``shaper``: hold it
        back until an emulated link would have delivered its ``payload`` bytes."""
        timeout = self.timeout if timeout is None else timeout
        where = f"{step_name(step)}{f' ({what})' if what else ''}" if kind == "step" else f"{kind} {step}"
        raw = await self._read(frames.HEADER.size, where, timeout)
        try:
            got, got_step, got_length, sent_at = frames.parse_header(raw)
        except FrameError as error:
            raise LinkError(f"{where}: {self} sent garbage: {error}") from None
        if got == "abort":
            self.peer_gone = True
            code = bytes(await self._read(min(got_length, 64), where, timeout)).decode(errors="replace")
            raise PeerAborted(f"{where}: the peer stopped: {ABORT_CODES.get(code, 'it stopped')} ({self})")
        if got != kind:
            raise LinkError(f"{where}: {self} sent a {got!r} frame, expected {kind!r}")
        if got_step != step:
            raise LinkError(f"{where}: {self} sent {step_name(got_step)}, expected {step_name(step)} (out of step)")
        bound = length if length is not None else (max_length if max_length is not None else frames.MAX_JSON)
        if (length is not None and got_length != length) or got_length > bound:
            raise LinkError(f"{where}: {self} sent {got_length} bytes, expected "
                            f"{length if length is not None else f'at most {bound}'}")
        body = bytearray()   # grown as chunks arrive: memory follows the bytes really sent, not the header
        for start in range(0, got_length, CHUNK):
            body += await self._read(min(CHUNK, got_length - start), where, timeout)
        if shaper is not None:   # the peer's clock, kept to the past (a stale or lying one cannot stall us)
            now = time.monotonic()
            sent = min(sent_at, now) if math.isfinite(sent_at) else now
            wait = min(shaper.arrival(sent, payload) - now, timeout)
            if wait > 0:
                await asyncio.sleep(wait)
        return body

    async def _exchange(self, step, parts, length, expected, expected_length, payload, what, shaper):
        send = asyncio.ensure_future(self._send(parts))
        try:
            body = await self._receive("step", step, expected_length, what=what, shaper=shaper, payload=payload)
        except BaseException:
            if not send.done():
                self.dirty = True   # a frame cut short: only closing is left (an abort would land mid-frame)
            send.cancel()
            raise
        limit = self.timeout + length / 1e6   # the peer's message is in: ours must be taken too (at >= 1 MB/s)
        try:
            await asyncio.wait_for(send, limit)
        except asyncio.TimeoutError:
            self.dirty = True
            raise LinkError(f"{step_name(step)}: {self} took none of this side's message within {limit:.0f} s") \
                from None
        except OSError as error:
            raise self._broken(f"{step_name(step)}: sending", error) from None
        return body


async def _open(host: str, port: int, context: ssl.SSLContext, timeout: float):
    return await asyncio.wait_for(asyncio.open_connection(host, port, ssl=context, server_hostname=host,
                                                          ssl_handshake_timeout=timeout), timeout)


def _check_role(writer, expected: str, peer: str) -> str:
    role = peer_role(writer.get_extra_info("ssl_object"))
    if role != expected:
        writer.close()
        raise LinkError(f"the peer at {peer} presented a {role or 'non-mpcc'} certificate, expected the {expected}'s")
    return role


def connect(host: str, port: int, context: ssl.SSLContext, expect_role: str, *, timeout: float = 30.0) -> Link:
    """Open a TLS connection to ``host:port`` whose certificate must carry ``expect_role``
    (on an I/O thread of its own, stopped with the link)."""
    io = EventLoopThread()
    peer = f"{host}:{port}"
    try:
        reader, writer = io.call(_open(host, port, context, timeout), timeout + 5)
        io.call(_async(_check_role, writer, expect_role, peer), timeout)
    except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
        io.stop()
        raise LinkError(f"cannot reach the {expect_role} at {peer} within {timeout:.0f} s") from None
    except ssl.SSLError as error:
        io.stop()
        raise LinkError(f"TLS with the {expect_role} at {peer} failed: {error.reason or error} (a certificate "
                        f"not signed by this CA, or not an mpcc {expect_role}?)") from None
    except OSError as error:
        io.stop()
        raise LinkError(f"cannot connect to the {expect_role} at {peer}: {error.strerror or error}") from None
    except LinkError:
        io.stop()
        raise
    return Link(io, reader, writer, peer, expect_role, timeout, owns_io=True)


async def _async(fn, *args):
    return fn(*args)
