"""Check ``--net`` emulation against the kernel's own shaping between two network
namespaces (needs root, ``ip`` and ``tc``). The server and dealer run in one
namespace, the client in the other, joined by a veth pair whose both ends are
shaped by ``tc``: ``netem`` (rate and delay) where the kernel has it, else
``tbf`` (rate only: the latency half then goes unchecked, and the script says so).
The same runs on loopback with ``--net RATE,DELAY`` on both sides, and with no
shaping, give the comparison.

    sudo python benchmarks/netns_validate.py [--model minilm] [--seq 32] [--rate-mbit 100] [--delay-ms 10]
"""
from __future__ import annotations

import argparse
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

A, B = "mpcc-val-a", "mpcc-val-b"
ADDRESS_A, ADDRESS_B = "10.99.7.1", "10.99.7.2"


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check)


def setup(rate_mbit: float, delay_ms: float) -> str:
    """The two namespaces and the shaped veth pair; returns the qdisc used."""
    teardown()
    sh("ip", "netns", "add", A)
    sh("ip", "netns", "add", B)
    sh("ip", "link", "add", "mpccva", "type", "veth", "peer", "name", "mpccvb")
    sh("ip", "link", "set", "mpccva", "netns", A)
    sh("ip", "link", "set", "mpccvb", "netns", B)
    for space, device, address in ((A, "mpccva", ADDRESS_A), (B, "mpccvb", ADDRESS_B)):
        sh("ip", "netns", "exec", space, "ip", "addr", "add", f"{address}/24", "dev", device)
        sh("ip", "netns", "exec", space, "ip", "link", "set", device, "up")
        sh("ip", "netns", "exec", space, "ip", "link", "set", "lo", "up")
    kind = "netem"
    for space, device in ((A, "mpccva"), (B, "mpccvb")):
        netem = sh("ip", "netns", "exec", space, "tc", "qdisc", "add", "dev", device, "root", "netem", "delay",
                   f"{delay_ms}ms", "rate", f"{rate_mbit}mbit", "limit", "100000", check=False)
        if netem.returncode != 0:
            kind = "tbf"
            sh("ip", "netns", "exec", space, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate",
               f"{rate_mbit}mbit", "burst", "64kb", "latency", "2000ms")
    return kind


def teardown() -> None:
    for space in (A, B):
        sh("ip", "netns", "del", space, check=False)


def _wait(host: str, port: int, space: str | None, seconds: float = 120.0) -> None:
    probe = [sys.executable, "-c", f"import socket; socket.create_connection(('{host}', {port}), 1).close()"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        command = (["ip", "netns", "exec", space] if space else []) + probe
        if subprocess.run(command, capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def run(plan: Path, certs: Path, host: str, spaces: tuple, net: str | None) -> float:
    """Dealer and server (in ``spaces[0]``), the client (in ``spaces[1]``): the client's parties time."""
    cli = [sys.executable, "-m", "mpcc.cli"]
    prefix = [(["ip", "netns", "exec", space] if space else []) for space in spaces]
    shaping = ["--net", net] if net else []
    dealer = subprocess.Popen(prefix[0] + cli + ["dealer", str(plan), "--listen", f"{host}:7100", "--certs",
                                                 str(certs)], stderr=subprocess.DEVNULL)
    server = subprocess.Popen(prefix[0] + cli + ["serve", str(plan), "--listen", f"{host}:7101", "--certs", str(certs),
                                                 "--dealer", f"{host}:7100", *shaping], stderr=subprocess.DEVNULL)
    try:
        _wait(host, 7100, spaces[0])
        _wait(host, 7101, spaces[0])
        done = subprocess.run(prefix[1] + cli + ["run", str(plan), "--connect", f"{host}:7101", "--certs", str(certs),
                                                 "--dealer", f"{host}:7100", "--timeout", "300", *shaping],
                              capture_output=True, text=True, timeout=1200)
        match = re.search(r"parties ([0-9.]+) s", done.stdout)
        if done.returncode != 0 or match is None:
            raise RuntimeError(done.stderr[-2000:])
        return float(match.group(1))
    finally:
        for process in (server, dealer):
            process.terminate()
            process.wait(30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--rate-mbit", type=float, default=100.0)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    args = parser.parse_args()
    import mpcc
    from mpcc.models import example_inputs, load_model
    from mpcc.net import make_certs
    work = Path(tempfile.mkdtemp(prefix="mpcc-netns-"))
    certs = make_certs(work / "certs", ("127.0.0.1", "localhost", ADDRESS_A))
    loaded = load_model(args.model)
    plan = mpcc.compile(loaded.model, example_inputs(loaded, seq_len=args.seq))
    plan.info["model"] = args.model
    plan_path = plan.save(work / "plan.mpcc")
    kind = setup(args.rate_mbit, args.delay_ms)
    try:
        delay = args.delay_ms if kind == "netem" else 0.0
        real = run(plan_path, certs, ADDRESS_A, (A, B), None)
        emulated = run(plan_path, certs, "127.0.0.1", (None, None), f"{args.rate_mbit}Mbps,{delay}ms")
        plain = run(plan_path, certs, "127.0.0.1", (None, None), None)
    finally:
        teardown()
    cost = plan.cost()
    print(f"{args.model} seq {args.seq}, first run (setup included), client's parties time:")
    print(f"  kernel {kind} ({args.rate_mbit:g} Mbit/s{f', {delay:g} ms' if delay else ''}) between namespaces: {real:.2f} s")
    print(f"  loopback with --net {args.rate_mbit:g}Mbps,{delay:g}ms on both sides:                   {emulated:.2f} s")
    print(f"  loopback, no shaping:                                                   {plain:.2f} s")
    print(f"  cost model: {cost.rounds} rounds, busier party online {max(p.online_bytes for p in cost.per_party) / 1e6:.1f} "
          f"MB, setup {cost.setup_bytes / 1e6:.1f} MB")
    if kind != "netem":
        print("  (this kernel has no netem: only the bandwidth half of the emulation was checked)")


if __name__ == "__main__":
    main()
