"""Helpers for running the parties as local processes (tests, benchmarks, trying it out)."""
from __future__ import annotations

import socket
import time

__all__ = ["free_port", "wait_for_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (another process may take it before it is used)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, process=None, *, host: str = "127.0.0.1", seconds: float = 120.0) -> None:
    """Wait until something listens on ``host:port``; ``process`` (a ``Popen``) that exits first is
    an error carrying the end of its stderr."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = process.stderr.read()[-2000:] if process.stderr else ""
            raise RuntimeError(f"{' '.join(map(str, process.args[:6]))} exited with {process.returncode}: {tail}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {host}:{port} after {seconds:.0f} s")
