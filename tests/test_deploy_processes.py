"""The README's three-terminal walkthrough as subprocesses (certs, compile, dealer,
serve, run --connect), then a server killed mid-run: the client reports it within
its time-out and exits non-zero."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpcc.net.local import free_port, wait_for_port

README = Path(__file__).parent.parent / "README.md"






def _walkthrough() -> list[str]:
    block = re.search(r"<!-- walkthrough -->\n```sh\n(.*?)```\n<!-- walkthrough -->", README.read_text(), re.S)
    assert block, "the README has the walkthrough"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip() and not line.startswith("#")]


def _argv(command: str, ports: dict) -> list[str]:
    for old, new in ports.items():
        command = command.replace(f":{old}", f":{new}")
    words = command.split()
    assert words[0] == "mpcc"
    return [sys.executable, "-m", "mpcc.cli", *words[1:]]


@pytest.fixture
def walkthrough(tmp_path):
    """The README's commands: the set-up run, the dealer and the server started (and stopped after)."""
    commands = _walkthrough()
    assert [c.split()[1] for c in commands] == ["certs", "compile", "dealer", "serve", "run"]
    ports = {7000: free_port(), 7001: free_port()}
    for command in commands[:2]:
        done = subprocess.run(_argv(command, ports), cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    started = []
    for command, port in zip(commands[2:4], ports.values()):
        started.append(subprocess.Popen(_argv(command, ports), cwd=tmp_path, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True))
        wait_for_port(port, started[-1])
    yield tmp_path, _argv(commands[4], ports), started
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


def test_the_readme_walkthrough_then_a_server_killed_mid_run(walkthrough):
    where, client, (dealer, server) = walkthrough
    done = subprocess.run(client, cwd=where, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "OK: max abs error" in done.stdout
    assert re.search(r"rounds \d+, online", done.stdout)

    # a slow run (the client emulates a 40 ms link), and the server process dies in the middle of it
    slow = subprocess.Popen(client[:-1] + ["--net", "wan", "--timeout", "20"], cwd=where, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4.0)   # the client has connected and runs (its 143 rounds take 6 s at 40 ms)
    assert slow.poll() is None, slow.communicate()
    server.kill()
    killed = time.monotonic()
    _, stderr = slow.communicate(timeout=30)
    assert time.monotonic() - killed < 20
    assert slow.returncode == 2
    # mid-run, the client names the server; on a loaded machine the client may still be joining the dealer's
    # deployment when the server dies (seen in CI), and the dealer, which ended it with the server, says so
    assert re.search(r"mpcc run: error: (.*the server at 127\.0\.0\.1:\d+ (closed the connection|failed)|the dealer "
                     r"refused 'join': no deployment '\w+' here for this connection \(it ended)", stderr), stderr


def test_workers_serve_concurrent_sessions_in_processes(walkthrough):
    """``mpcc serve --workers 2``: two server processes on one port, two clients at once, both right."""
    where, client, (dealer, server) = walkthrough
    server.kill()
    port = free_port()
    serve = [*client[:3], "serve", "tiny.mpcc", "--listen", f"127.0.0.1:{port}", "--certs", "certs", "--dealer",
             client[client.index("--dealer") + 1], "--workers", "2"]
    workers = subprocess.Popen(serve, cwd=where, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, workers)
        time.sleep(3.0)   # both workers listen
        at = client.index("--connect") + 1
        runs = [subprocess.Popen(client[:at] + [f"127.0.0.1:{port}"] + client[at + 1:], cwd=where,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for run in runs:
            out, err = run.communicate(timeout=300)
            assert run.returncode == 0 and "OK: max abs error" in out, err
    finally:
        workers.send_signal(signal.SIGTERM)
        _, log = workers.communicate(timeout=30)
    assert workers.returncode == 0, log
    assert len(set(re.findall(r"serving plan \w+ on 127\.0\.0\.1:\d+", log))) == 1 and log.count("serving plan") == 2
