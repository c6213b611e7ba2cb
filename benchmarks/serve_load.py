"""Load on one server: N clients (1, 4, 16 by default) at once against
``mpcc serve`` (and ``mpcc dealer``) on 127.0.0.1, with tiny-bert and MiniLM.

    python benchmarks/serve_load.py [--models tiny-bert minilm] [--clients 1 4 16] [--runs 2]
                                    [--workers 2] [--seq-minilm 32] [--deadline 900]

Each client is a thread of this process with its own session (connection and
deployment); it runs ``--runs`` inferences and checks each against float64
torch (the presets' weights are public here, so the client can). Reports
throughput, latency percentiles (a run, from request to outputs; the first
run of a session carries the masked weights), the server's resident memory
(all its worker processes, at the end and at peak) and whether every result
was correct. Bounded: ``--runs`` per client, ``--deadline`` seconds in all.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import mpcc
from mpcc.frontend import reference_outputs
from mpcc.models import example_inputs, load_model
from mpcc.net import make_certs
from mpcc.net.local import free_port, wait_for_port






def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    family, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        family += frontier
    return family


def _memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) MB of ``pid`` and its descendants."""
    now = peak = 0
    for member in _tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                now += int(line.split()[1])
            if line.startswith("VmHWM:"):
                peak += int(line.split()[1])
    return now / 1024, peak / 1024


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load(plan, model, inputs_of, clients: int, runs: int, server, dealer, certs, deadline: float) -> dict:
    latencies, errors, failures = [], [], []
    lock = threading.Lock()

    def client(index: int):
        try:
            with mpcc.connect(plan, server, certs, dealer, timeout=300) as session:
                for run in range(runs):
                    if time.monotonic() > deadline:
                        return
                    inputs = inputs_of(index * runs + run)
                    start = time.perf_counter()
                    outputs, _ = session.run(inputs)
                    seconds = time.perf_counter() - start
                    expected = reference_outputs(model, inputs)
                    error = max(float((o - e).abs().max()) for o, e in zip(outputs, expected))
                    with lock:
                        latencies.append(seconds)
                        errors.append(error)
        except Exception as failure:   # reported, not raised: the other clients go on
            with lock:
                failures.append(f"client {index}: {type(failure).__name__}: {failure}")
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "runs": len(latencies), "wall_s": round(wall, 2),
            "throughput_runs_per_s": round(len(latencies) / wall, 3),
            "latency_p50_s": round(_percentile(latencies, 50), 3) if latencies else None,
            "latency_p90_s": round(_percentile(latencies, 90), 3) if latencies else None,
            "latency_max_s": round(max(latencies), 3) if latencies else None,
            "max_abs_error": max(errors) if errors else None,
            "all_correct": bool(errors) and max(errors) < 1e-2 and not failures, "failures": failures}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny-bert", "minilm"])
    parser.add_argument("--clients", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--runs", type=int, default=2, help="inferences per client")
    parser.add_argument("--workers", type=int, default=2, help="server processes (mpcc serve --workers)")
    parser.add_argument("--seq-minilm", type=int, default=32)
    parser.add_argument("--deadline", type=float, default=900.0, help="seconds for the whole benchmark")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    deadline = time.monotonic() + args.deadline
    work = Path(tempfile.mkdtemp(prefix="mpcc-load-"))
    certs = make_certs(work / "certs")
    cli = [sys.executable, "-m", "mpcc.cli"]
    rows = []
    for name in args.models:
        loaded = load_model(name)
        seq = args.seq_minilm if name == "minilm" else None
        base = example_inputs(loaded, seq_len=seq)
        plan = mpcc.compile(loaded.model, base)
        plan.info["model"] = name
        plan_path = plan.save(work / f"{name}.mpcc")
        vocab = plan.graph[next(n.name for n in plan.graph.nodes if n.op == "one_hot")].attrs["num_classes"] \
            if any(n.op == "one_hot" for n in plan.graph.nodes) else None

        def inputs_of(index: int, base=base, vocab=vocab):
            import torch
            if vocab is None:
                return base
            generator = torch.Generator().manual_seed(index)
            return {**base, "input_ids": torch.randint(0, vocab, tuple(base["input_ids"].shape), generator=generator)}
        dealer_port, server_port = free_port(), free_port()
        dealer = subprocess.Popen(cli + ["dealer", str(plan_path), "--listen", f"127.0.0.1:{dealer_port}", "--certs",
                                         str(certs), "--timeout", "300"], stderr=subprocess.DEVNULL)
        server = subprocess.Popen(cli + ["serve", str(plan_path), "--listen", f"127.0.0.1:{server_port}", "--certs",
                                         str(certs), "--dealer", f"127.0.0.1:{dealer_port}", "--workers",
                                         str(args.workers), "--timeout", "300"], stderr=subprocess.PIPE, text=True)
        try:
            wait_for_port(dealer_port, dealer, seconds=300)
            wait_for_port(server_port, server, seconds=300)
            time.sleep(2.0 * args.workers)   # every worker has loaded and listens
            idle = _memory_mb(server.pid)[0]
            for clients in args.clients:
                if time.monotonic() > deadline:
                    break
                row = load(plan, loaded.model, inputs_of, clients, args.runs, ("127.0.0.1", server_port),
                           ("127.0.0.1", dealer_port), certs, deadline)
                row.update({"model": name, "seq": int(base["input_ids"].shape[-1]) if "input_ids" in base else None,
                            "workers": args.workers, "server_idle_MB": round(idle, 1)})
                row["server_MB"], row["server_peak_MB"] = (round(v, 1) for v in _memory_mb(server.pid))
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            for process in (server, dealer):
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
