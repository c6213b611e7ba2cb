"""The deployment commands: ``mpcc certs``, ``mpcc dealer``, ``mpcc serve`` and
``mpcc run PLAN --connect``: client, server and dealer as separate processes
over mutually authenticated TLS (docs/deployment.md)."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .cli_steps import CliError, load_plan, step

__all__ = ["add_commands", "add_client_options", "run_client", "parse_address"]


def parse_address(text: str | None, option: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); one clear line for anything else."""
    if not text:
        raise CliError(f"{option} HOST:PORT is needed")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise CliError(f"{option} {text!r}: expected HOST:PORT, such as 127.0.0.1:7001")
    return host.strip("[]"), int(port)


def _log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _network(text: str | None):
    if text is None:
        return None
    from .net.shaper import NetworkShaper
    return NetworkShaper(text)   # a ValueError lists the valid forms


def cmd_certs(args) -> int:
    from .net.certs import CertificateError, make_certs
    try:
        hosts = tuple(args.host or ("127.0.0.1", "localhost"))
        directory = make_certs(args.dir, hosts, overwrite=args.force)
    except CertificateError as error:
        raise CliError(str(error)) from None
    print(f"wrote a self-signed CA and client, server and dealer certificates to {directory} (valid for "
          f"{', '.join(hosts)}); for trying mpcc out: real deployments bring their own files in this layout")
    return 0


def cmd_dealer(args) -> int:
    from .net.dealer_service import DealerService
    plan = load_plan(args.plan)
    if (args.listen is None) == (args.out is None):
        raise CliError("give --listen HOST:PORT (deal live) or --out DIR --runs N (deal ahead into files)")
    if args.out is not None:
        from .net.material import deal_to_files
        if args.runs is None:
            raise CliError("--out needs --runs N: how many runs' material to deal")
        start = time.perf_counter()
        with step(f"dealing {args.runs} run(s) of material into {args.out}"):
            deployment, out = deal_to_files(plan, args.out, args.runs)
        print(f"dealt deployment {deployment[:12]}: {args.runs} run(s) in {time.perf_counter() - start:.1f} s; give "
              f"{out / 'server'} to the server (mpcc serve --material) and {out / 'client'} to the client "
              f"(mpcc run --connect ... --material), each only its own")
        return 0
    if args.certs is None:
        raise CliError("--listen needs --certs DIR (make a test set with mpcc certs DIR)")
    service = DealerService(plan, parse_address(args.listen, "--listen"), args.certs, timeout=args.timeout, log=_log)
    host, port = service.address
    _log(f"dealer for plan {plan.hash[:12]} listening on {host}:{port}")
    try:
        service.serve_forever(args.max_connections)
    except KeyboardInterrupt:
        _log("dealer stopped")
    finally:
        service.close()
    return 0


def _weights(source: str | None, plan):
    source = source or plan.info.get("model")
    if not source:
        raise CliError("the plan does not name its model; give --weights FILE.safetensors, a model directory or a "
                       "preset")
    if source.endswith(".safetensors") and Path(source).is_file():
        from safetensors.torch import load_file
        with step(f"reading the weights {source}"):
            return load_file(source)
    from .cli_steps import _no_weight_bars
    from .models import load_model
    with step(f"loading the weights of {source}"), _no_weight_bars():
        return load_model(source).model.state_dict()


def _serve_worker(plan_path: str, weights: str | None, listen, certs, dealer, options: dict, reuse: bool,
                  max_sessions) -> None:
    """One server process; with --workers, a child: its errors end in one line and exit code 2."""
    try:
        _serve(plan_path, weights, listen, certs, dealer, options, reuse, max_sessions)
    except KeyboardInterrupt:
        pass
    except Exception as error:
        if not reuse:
            raise
        print(f"mpcc serve: error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def _serve(plan_path: str, weights: str | None, listen, certs, dealer, options: dict, reuse: bool,
           max_sessions) -> None:
    from .net.certs import server_context
    from .net.server import Server
    plan = load_plan(plan_path)
    server_context(certs, "server")   # the certificates first: loading weights takes a while
    server = Server(plan, _weights(weights, plan), listen, certs, dealer, log=_log, reuse_port=reuse,
                    net=_network(options.pop("net")), **options)
    host, port = server.address
    source = f"dealer {dealer[0]}:{dealer[1]}" if dealer else f"material dealt ahead in {options['material']}"
    _log(f"serving plan {plan.hash[:12]} on {host}:{port} ({source})")
    try:
        server.serve_forever(max_sessions)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


def cmd_serve(args) -> int:
    listen = parse_address(args.listen, "--listen")
    if (args.dealer is None) == (args.material is None):
        raise CliError("give --dealer HOST:PORT (a live dealer) or --material DIR (the server's directory from "
                       "mpcc dealer --out)")
    dealer = parse_address(args.dealer, "--dealer") if args.dealer else None
    _network(args.net)
    options = {"timeout": args.timeout, "backend": args.backend, "net": args.net, "material": args.material}
    if args.workers == 1:
        _serve_worker(args.plan, args.weights, listen, args.certs, dealer, options, False, args.max_sessions)
        return 0
    if listen[1] == 0:
        raise CliError("--workers needs a fixed port in --listen (the workers share it)")
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_serve_worker, args=(args.plan, args.weights, listen, args.certs, dealer,
                                                           dict(options), True, args.max_sessions),
                               name=f"mpcc-serve-{i}") for i in range(args.workers)]
    for worker in workers:
        worker.start()

    def stop(*_):   # SIGTERM stops the workers too, not only this parent
        raise KeyboardInterrupt
    import signal
    signal.signal(signal.SIGTERM, stop)
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:   # asked to stop: the workers are stopped on purpose
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(10)
        return 0
    return 0 if all(w.exitcode in (0, None) for w in workers) else 1


def run_client(args) -> int:
    """``mpcc run PLAN --connect HOST:PORT``: the client party only."""
    from .cli_steps import SECURE_TOLERANCE, load_model_and_inputs, reference, verdict
    from .net.client import ClientSession
    if not Path(args.model).is_file():
        raise CliError(f"--connect runs a plan file (from mpcc compile), and {args.model} is not one")
    plan = load_plan(args.model)
    source = args.weights or plan.info.get("model")
    if not source:
        raise CliError(f"{args.model} does not name its model; give --weights MODEL (its tokenizer and config make "
                       f"the inputs)")
    loaded, inputs = load_model_and_inputs(source, args.seq, args.input, plan=plan)
    if (args.dealer is None) == (args.material is None):
        raise CliError("give --dealer HOST:PORT (a live dealer) or --material DIR (the client's directory from "
                       "mpcc dealer --out)")
    if args.certs is None:
        raise CliError("--connect needs --certs DIR")
    server = parse_address(args.connect, "--connect")
    dealer = parse_address(args.dealer, "--dealer") if args.dealer else None
    with step(f"connecting to the server at {server[0]}:{server[1]}"):
        client = ClientSession(plan, server, args.certs, dealer, material=args.material, backend=args.backend,
                               timeout=args.timeout, net=_network(args.net))
    with client:
        outputs, stats = client.run(inputs)
    for name, value in zip(plan.graph.outputs, outputs):
        print(f"output %{name} {list(value.shape)}: first values {[round(float(v), 4) for v in value.flatten()[:4]]}")
    print(stats.summary())
    if args.save:
        from safetensors.torch import save_file
        save_file({name: value.contiguous() for name, value in zip(plan.graph.outputs, outputs)}, args.save)
        print(f"outputs saved to {args.save}")
    if not args.check:
        return 0
    worst = max(float((got - want).abs().max()) for got, want in zip(outputs, reference(loaded, inputs)))
    return verdict(worst, SECURE_TOLERANCE)


CERTS_HELP = "directory of certificates: ca.pem and ROLE.pem, ROLE.key (see mpcc certs)"
TIMEOUT_HELP = "seconds any wait for a peer may take before the run fails"


def add_commands(command, backends, backend_help) -> None:
    """The deployment commands on the ``mpcc`` parser (``command(name, help, run)`` makes one)."""
    certs_help, timeout_help = CERTS_HELP, TIMEOUT_HELP
    p = command("certs", "make a self-signed CA and client, server and dealer certificates, for trying mpcc out",
                cmd_certs)
    p.add_argument("dir", help="directory to write (ca.pem, client.pem/.key, server.pem/.key, dealer.pem/.key)")
    p.add_argument("--host", action="append", default=None, metavar="NAME_OR_IP",
                   help="a host name or address the server and dealer certificates are valid for, repeatable "
                        "(default: 127.0.0.1 and localhost)")
    p.add_argument("--force", action="store_true", help="replace certificates already in the directory")

    p = command("dealer", "deal correlated randomness: live to a server and its clients over TLS (--listen), or "
                          "ahead of time into one directory per party (--out)", cmd_dealer)
    p.add_argument("plan", help="plan file (from mpcc compile)")
    p.add_argument("--listen", default=None, metavar="HOST:PORT", help="deal live: the address to listen on")
    p.add_argument("--certs", default=None, metavar="DIR", help="with --listen: " + certs_help)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="deal ahead: one new deployment into DIR/client and DIR/server (each party gets only its own)")
    p.add_argument("--runs", type=int, default=None, metavar="N", help="with --out: runs' material to deal")
    p.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help="stop after N party connections (default: run until interrupted)")
    p.add_argument("--timeout", type=float, default=60.0, help=timeout_help)

    p = command("serve", "the server party: hold the weights and serve client sessions over TLS", cmd_serve)
    p.add_argument("plan", help="plan file (from mpcc compile); the server runs only this plan")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on")
    p.add_argument("--certs", required=True, metavar="DIR", help=certs_help)
    p.add_argument("--dealer", default=None, metavar="HOST:PORT", help="the live dealer (mpcc dealer --listen)")
    p.add_argument("--material", default=None, metavar="DIR",
                   help="instead of --dealer: the server's directory of material dealt ahead (mpcc dealer --out)")
    p.add_argument("--weights", default=None, help="a .safetensors file, a model directory or a preset (default: the "
                                                   "model the plan was compiled from)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="processes serving sessions side by side")
    p.add_argument("--max-sessions", type=int, default=None, metavar="N",
                   help="stop after N client sessions per worker (default: serve until interrupted)")
    p.add_argument("--backend", default="cpu", choices=backends, help=backend_help)
    p.add_argument("--net", default=None, metavar="lan|wan|BANDWIDTH,LATENCY",
                   help="emulate a slower, more distant link on what this side receives (give it to both sides)")
    p.add_argument("--timeout", type=float, default=60.0, help=timeout_help)


def add_client_options(p) -> None:
    """``mpcc run``'s options for running as the client of a server."""
    p.add_argument("--connect", default=None, metavar="HOST:PORT",
                   help="run as the client of a server (mpcc serve) instead of both parties in this process")
    p.add_argument("--certs", default=None, metavar="DIR", help="with --connect: the certificates directory")
    p.add_argument("--dealer", default=None, metavar="HOST:PORT", help="with --connect: the live dealer (mpcc dealer)")
    p.add_argument("--material", default=None, metavar="DIR",
                   help="with --connect, instead of --dealer: the client's directory of material dealt ahead")
    p.add_argument("--net", default=None, metavar="lan|wan|BANDWIDTH,LATENCY",
                   help="with --connect: emulate a slower, more distant link on what the client receives (give the "
                        "server the same)")
    p.add_argument("--save", default=None, metavar="FILE.safetensors", help="with --connect: save the outputs")
    p.add_argument("--check", action="store_true",
                   help="with --connect: compare with torch (needs the model's weights on the client: for trying "
                        "it out)")
    p.add_argument("--timeout", type=float, default=60.0, help="with --connect: " + TIMEOUT_HELP)
