"""The network transport measured: TLS, packing and chunking against the
in-process transport, and client, server and dealer as three processes on
loopback with emulated networks (``--net``) against the cost model's estimate.

    python benchmarks/deploy_net.py [--models minilm bert-base] [--seq 128] [--nets none lan wan] [--runs 2]

For each model: (1) one process, a session over each transport, runs
alternated, the fastest after the first; (2) ``mpcc dealer`` and ``mpcc serve``
as subprocesses (the server shaping what it sends with ``--net``), the client
here (shaping its sends too), one session: the first run (it sends the masked
weights) and the fastest later run, beside ``plan.cost().estimate_seconds(net)``.
Loopback only; bounded by --runs.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import mpcc
from mpcc.models import example_inputs, load_model
from mpcc.net import make_certs
from mpcc.net.local import free_port, wait_for_port






def transports(plan, weights, inputs, runs: int) -> dict:
    """Fastest run after the first, per transport, alternating so noise hits both alike."""
    sessions = {kind: mpcc.Session(plan, weights, transport=kind, progress=False) for kind in ("inprocess", "tls")}
    times = {kind: [] for kind in sessions}
    for index in range(runs + 1):
        for kind, session in sessions.items():
            _, stats = session.run(inputs)
            if index:
                times[kind].append(stats.total_seconds)
    best = {kind: min(values) for kind, values in times.items()}
    return {"inprocess_s": round(best["inprocess"], 3), "tls_s": round(best["tls"], 3),
            "tls_overhead_s": round(best["tls"] - best["inprocess"], 3),
            "tls_overhead_pct": round(100 * (best["tls"] / best["inprocess"] - 1), 1)}


def deployed(plan_path: Path, plan, inputs, certs, net: str | None, runs: int) -> dict:
    """Dealer and server as processes, the client here; one session of ``runs`` runs."""
    cli = [sys.executable, "-m", "mpcc.cli"]
    dealer_port, server_port = free_port(), free_port()
    shaping = [] if net is None else ["--net", net]
    dealer = subprocess.Popen(cli + ["dealer", str(plan_path), "--listen", f"127.0.0.1:{dealer_port}", "--certs",
                                     str(certs), "--timeout", "600"], stderr=subprocess.PIPE, text=True)
    server = None
    try:
        wait_for_port(dealer_port, dealer, seconds=300)
        server = subprocess.Popen(cli + ["serve", str(plan_path), "--listen", f"127.0.0.1:{server_port}", "--certs",
                                         str(certs), "--dealer", f"127.0.0.1:{dealer_port}", "--timeout", "600",
                                         *shaping], stderr=subprocess.PIPE, text=True)
        wait_for_port(server_port, server, seconds=300)
        times = []
        with mpcc.connect(plan, f"127.0.0.1:{server_port}", certs, f"127.0.0.1:{dealer_port}", net=net,
                          timeout=600) as client:
            for _ in range(runs):
                _, stats = client.run(inputs)
                times.append((stats.total_seconds, stats.online_seconds, stats.rounds, stats.online_bytes))
    except Exception:
        for process in (server, dealer):
            if process is not None:
                process.terminate()
                print(process.stderr.read()[-3000:], file=sys.stderr)
        raise
    finally:
        for process in (server, dealer):
            if process is not None:
                process.terminate()
                process.wait(30)
    cost = plan.cost()
    later = min(times[1:] or times)
    row = {"net": net or "none", "first_run_s": round(times[0][0], 3), "run_s": round(later[0], 3),
           "online_s": round(later[1], 3), "rounds": later[2], "online_MB": [round(b / 1e6, 2) for b in later[3]],
           "cost_rounds": cost.rounds}
    if net is not None:
        row["cost_estimate_s"] = round(cost.estimate_seconds(net), 3)
        row["cost_network_s"] = round(cost.latency_seconds(net) + cost.bandwidth_seconds(net), 3)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "bert-base"])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--nets", nargs="*", default=["none", "lan", "wan"], help="none for no shaping; none at all: skip")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--skip-transports", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpcc-deploy-"))
    certs = make_certs(work / "certs")
    rows = []
    for name in args.models:
        loaded = load_model(name)
        inputs = example_inputs(loaded, seq_len=args.seq)
        plan = mpcc.compile(loaded.model, inputs)
        plan.info["model"] = name
        plan_path = plan.save(work / f"{name}.mpcc")
        row = {"model": name, "seq": args.seq}
        if not args.skip_transports:
            row["transports"] = transports(plan, loaded.model.state_dict(), inputs, args.runs)
            print(name, "transports", row["transports"], flush=True)
        row["deployed"] = []
        for net in args.nets:
            result = deployed(plan_path, plan, inputs, certs, None if net == "none" else net, args.runs)
            row["deployed"].append(result)
            print(name, "deployed", result, flush=True)
        rows.append(row)
    text = json.dumps(rows, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
