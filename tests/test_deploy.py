"""Client, server and dealer over mutually authenticated TLS on 127.0.0.1: results
against float64 torch and the cost model, sessions and deployments, and every
failure a peer can cause (a wrong plan or certificate, plain TCP, garbage, a wrong
step or size, a stall, a disconnect), each a clear error within seconds, after
which the server goes on serving."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
import torch

import mpcc
from mpcc.frontend import reference_outputs
from mpcc.net import HandshakeError, LinkError, make_certs
from mpcc.net import frames
from mpcc.net.certs import client_context
from mpcc.net.dealer_service import DealerLink, DealerRefused, DealerService
from mpcc.net.link import EventLoopThread
from mpcc.net.material import FileMaterial, MaterialGone, deal_to_files
from mpcc.net.shaper import NetworkShaper
from mpcc.runtime.dealer import MaterialFileError
from mpcc.net.endpoint import loopback_pair, test_certs
from mpcc.net.link import connect
from mpcc.runtime.context import PeerAborted
from mpcc.runtime.transport import Piece

from .conftest import token_ids


@pytest.fixture(scope="module")
def deployment(tiny_bert):
    """A dealer and a server for tiny-bert (seq 6) in this process, each on its own port."""
    inputs = {"input_ids": token_ids(6, 120)}
    plan = mpcc.compile(tiny_bert, inputs)
    certs = test_certs()
    log: list[str] = []
    dealer = DealerService(plan, ("127.0.0.1", 0), certs, log=log.append, timeout=10)
    threading.Thread(target=dealer.serve_forever, daemon=True).start()
    server = mpcc.serve(plan, tiny_bert.state_dict(), "127.0.0.1:0", certs, dealer.address, block=False,
                        log=log.append, timeout=10)
    yield plan, certs, dealer, server, log
    server.close()
    dealer.close()


def _connect(deployment, **options):
    plan, certs, dealer, server, _ = deployment
    return mpcc.connect(plan, server.address, certs, dealer.address, **options)


def _wait_for(log, text, after: int = 0, seconds: float = 10.0) -> str:
    """The first line with ``text`` the server or dealer logged after line ``after``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in log[after:]:
            if text in line:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line with {text!r} in {log[-5:]}")


def test_runs_over_tls_match_torch_and_the_cost_model(deployment, tiny_bert):
    plan, *_ = deployment
    cost = plan.cost()
    with _connect(deployment) as client:
        deployment_id = client.deployment
        for run in range(2):
            ids = token_ids(6, 120, seed=run + 3)
            outputs, stats = client.run({"input_ids": ids})
            expected = reference_outputs(tiny_bert, {"input_ids": ids})
            assert max(float((o - e).abs().max()) for o, e in zip(outputs, expected)) < 1e-2
            assert stats.rounds == cost.rounds
            assert stats.online_bytes == (cost.per_party[0].online_bytes, cost.per_party[1].online_bytes)
            assert stats.setup_bytes == (cost.setup_bytes if run == 0 else 0)   # the weights go once a deployment
    with _connect(deployment) as again:   # a new session is a new deployment: fresh seeds, weights sent again
        assert again.deployment != deployment_id
        _, stats = again.run({"input_ids": token_ids(6, 120)})
        assert stats.setup_bytes == cost.setup_bytes


def test_the_server_refuses_another_plan_on_both_sides(deployment, tiny_bert):
    plan, certs, dealer, server, log = deployment
    other = mpcc.compile(tiny_bert, {"input_ids": token_ids(5, 120)})
    before = len(log)
    with pytest.raises(HandshakeError, match="refused by the server at .*: the server at .* has plan hash"):
        mpcc.connect(other, server.address, certs, dealer.address)
    assert "plan hash" in _wait_for(log, "refused the client", before)
    with _connect(deployment) as client:   # and goes on serving
        client.run({"input_ids": token_ids(6, 120)})


def test_a_certificate_of_another_ca_is_refused(deployment, tmp_path):
    plan, certs, dealer, server, log = deployment
    stranger = make_certs(tmp_path / "other")
    before = len(log)
    with pytest.raises(LinkError, match="TLS with the server .* failed"):
        mpcc.connect(plan, server.address, stranger, dealer.address, timeout=5)
    _wait_for(log, "TLS handshake failed", before)
    with _connect(deployment) as client:
        client.run({"input_ids": token_ids(6, 120)})


def test_a_peer_with_the_wrong_role_is_refused(deployment):
    plan, certs, dealer, server, log = deployment
    with pytest.raises(LinkError, match="presented a server certificate, expected the dealer's"):
        connect(*server.address, client_context(certs, "client"), "dealer", timeout=5)


def test_a_plain_tcp_client_is_refused_and_the_server_goes_on(deployment):
    plan, certs, dealer, server, log = deployment
    before = len(log)
    with socket.create_connection(server.address, timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        plain.settimeout(5)
        try:
            assert plain.recv(100) == b""   # the server closes it
        except ConnectionResetError:
            pass
    _wait_for(log, "TLS handshake failed", before)
    with _connect(deployment) as client:
        client.run({"input_ids": token_ids(6, 120)})


def test_a_client_that_fails_mid_session_reconnects_to_a_fresh_deployment(deployment):
    client = _connect(deployment)
    first = client.deployment
    client.run({"input_ids": token_ids(6, 120)})
    client.link.abort("failed")    # the client goes away between runs
    with _connect(deployment) as again:
        assert again.deployment != first
        again.run({"input_ids": token_ids(6, 120)})


def test_the_client_checks_its_inputs_before_anything_is_sent(deployment):
    with _connect(deployment) as client:
        with pytest.raises(mpcc.RunError, match="token ids must lie in"):
            client.run({"input_ids": torch.full((1, 6), 5000)})
        client.run({"input_ids": token_ids(6, 120)})   # nothing was sent: the session goes on


def test_joining_a_deployment_needs_the_token_its_server_got(deployment):
    plan, certs, dealer, *_ = deployment
    server_side = DealerLink(dealer.address, certs, "server", plan)
    first = DealerLink(dealer.address, certs, "client", plan)
    try:
        deployment_id, _, token = server_side.deploy()
        with pytest.raises(DealerRefused, match="wrong join token"):   # the id alone is not enough
            first.join(deployment_id, "0" * 32)
        assert len(first.join(deployment_id, token)) == 32
    finally:
        first.close()
        server_side.close()


def test_the_dealer_hands_each_share_once_and_only_to_its_party(deployment):
    plan, certs, dealer, server, log = deployment
    with _connect(deployment) as client:
        client.run({"input_ids": token_ids(6, 120)})
        intruder = DealerLink(dealer.address, certs, "client", plan)
        other_server = DealerLink(dealer.address, certs, "server", plan)
        try:
            with pytest.raises(DealerRefused, match="a client already joined this deployment"):
                intruder.join(client.deployment, "0" * 32)
            with pytest.raises(DealerRefused, match="no deployment .* here for this connection"):
                intruder.take(client.deployment, client.last_label)
            with pytest.raises(DealerRefused, match="no deployment .* here for this connection"):
                other_server.deal(client.deployment)
            with pytest.raises(DealerRefused, match="a client may not ask 'deal'"):
                intruder._ask({"op": "deal", "deployment": client.deployment})
            with pytest.raises(DealerRefused, match="no material .* waits for this client"):
                client.source.link.take(client.deployment, client.last_label)   # taken once already
        finally:
            intruder.close()
            other_server.close()
        client.run({"input_ids": token_ids(6, 120)})   # the session goes on


def test_material_dealt_ahead_into_files_is_used_once_then_refused(deployment, tiny_bert, tmp_path):
    plan, certs, dealer, _, _ = deployment
    deployment_id, out = deal_to_files(plan, tmp_path / "dealt", 2)
    log: list[str] = []
    server = mpcc.serve(plan, tiny_bert.state_dict(), "127.0.0.1:0", certs, material=out / "server", block=False,
                        log=log.append, timeout=10)
    try:
        with mpcc.connect(plan, server.address, certs, material=out / "client") as client:
            assert client.deployment == deployment_id
            for run in range(2):
                ids = token_ids(6, 120, seed=run)
                outputs, _ = client.run({"input_ids": ids})
                expected = reference_outputs(tiny_bert, {"input_ids": ids})
                assert max(float((o - e).abs().max()) for o, e in zip(outputs, expected)) < 1e-2
            assert not list((out / "server").glob("*.safetensors")) and not list((out / "client").glob("*.safetensors"))
            with pytest.raises(PeerAborted, match="no material dealt ahead left"):   # nothing left: the server says so
                client.run({"input_ids": token_ids(6, 120)})
        assert "no pre-dealt material left" in _wait_for(log, "failed")
        _, other = deal_to_files(plan, tmp_path / "other", 1)
        with pytest.raises(HandshakeError, match="material dealt ahead for deployment"):
            mpcc.connect(plan, server.address, certs, material=other / "client")
        with pytest.raises(HandshakeError, match="material dealt ahead for deployment"):
            mpcc.connect(plan, server.address, certs, dealer.address)   # a live client
        with pytest.raises(MaterialFileError, match="for the server; this is plan .* the client"):
            mpcc.connect(plan, server.address, certs, material=out / "server")
    finally:
        server.close()


# --- the transport itself: what a misbehaving peer can send, caught before the body is read

THREE = [Piece(torch.arange(3, dtype=torch.int64))]


@pytest.fixture
def pair():
    client, server = loopback_pair(timeout=2.0)
    yield client, server
    client.close()
    server.close()


def _send_raw(endpoint, kind, step, body: bytes):
    endpoint.link.send_bytes(kind, [body], step=step)


def test_a_packed_step_round_trips(pair):
    client, server = pair
    words = torch.tensor([-1, 5, 2 ** 40 + 7, -(2 ** 63)], dtype=torch.int64)
    pieces = [Piece(words, 17), Piece(words, 1), Piece(words, 64), Piece(words, 24),
              Piece(words, 2, layout=(1 << 9) | (1 << 63))]
    results = {}
    thread = threading.Thread(target=lambda: results.setdefault(1, server.step(pieces, pieces)))
    thread.start()
    got = client.step(pieces, pieces)
    thread.join()
    masks = [(1 << 17) - 1, 1, -1, (1 << 24) - 1, (1 << 9) | -(1 << 63)]
    for tensor, mask in zip(got, masks):
        assert torch.equal(tensor, words & mask)
    assert client.stats.bytes_sent == 9 + 1 + 32 + 12 + 1   # ceil(4 * bits / 8) each: packed, not 8 per word


def test_a_wrong_step_id_is_an_error_naming_the_step(pair):
    client, server = pair
    body = frames.describe(THREE) + bytes(24)
    _send_raw(server, "step", 7, body)
    with pytest.raises(LinkError, match=r"step 0 \(n\): the server at .* sent step 7, expected step 0"):
        client.step(THREE, THREE, what="n")


def test_a_wrong_size_is_an_error(pair):
    client, server = pair
    _send_raw(server, "step", 0, frames.describe(THREE) + bytes(16))   # 2 words, not 3
    expected = len(frames.describe(THREE)) + 24
    with pytest.raises(LinkError, match=f"sent {expected - 8} bytes, expected {expected}"):
        client.step(THREE, THREE)


def test_a_wrong_shape_is_an_error(pair):
    client, server = pair
    four = [Piece(torch.zeros(4, dtype=torch.int64))]
    eight = [Piece(torch.zeros(8, dtype=torch.int64), 32)]   # as many bytes as four full words
    _send_raw(server, "step", 0, frames.describe(eight) + bytes(32))
    with pytest.raises(LinkError, match=r"sent tensors \[\(8,\)\], expected \[\(4,\)\]"):
        client.step(four, four)


def test_garbage_is_an_error(pair):
    client, server = pair
    server.link._call(server.link._send([b"\x00garbage and more garbage\x00" * 4]), "raw")
    with pytest.raises(LinkError, match="sent garbage: not an mpcc frame"):
        client.step(THREE, THREE)


def test_a_stalled_peer_is_an_error_within_the_time_out(pair):
    client, _ = pair
    start = time.monotonic()
    with pytest.raises(LinkError, match=r"step 0: no data from the server at .* within 2 s"):
        client.step(THREE, THREE)
    assert time.monotonic() - start < 5


def test_a_peer_that_disconnects_is_an_error(pair):
    client, server = pair
    server.link.close()
    with pytest.raises(LinkError, match="closed the connection|connection to the server .* failed"):
        client.step(THREE, THREE)


def test_a_lying_send_time_cannot_stall_an_emulated_link(pair):
    client, server = pair
    client.net = NetworkShaper("lan")
    body = frames.describe(THREE) + bytes(24)
    raw = frames.HEADER.pack(b"MPCC", frames.VERSION, frames.KINDS["step"], 0, 0, len(body), 1e18)   # "sent" in 1e18 s
    server.link._call(server.link._send([raw, body]), "raw")
    start = time.monotonic()
    assert client.step(THREE, THREE)[0].tolist() == [0, 0, 0]
    assert time.monotonic() - start < 1.0


def test_a_stopped_event_loop_fails_its_callers_instead_of_hanging():
    io = EventLoopThread("test")
    outcome = []

    def wait_forever():
        try:
            io.call(asyncio.sleep(3600))
        except BaseException as error:
            outcome.append(type(error).__name__)
    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    time.sleep(0.2)
    io.stop()
    waiter.join(5)
    assert not waiter.is_alive() and outcome == ["CancelledError"]


def test_a_label_from_the_peer_is_never_a_path_or_a_pattern(deployment, tmp_path):
    plan, *_ = deployment
    _, out = deal_to_files(plan, tmp_path / "dealt", 1)
    files = FileMaterial(out / "client", plan, 0)
    for label in ("*", "../server/*", "0" * 31 + "?", files.labels()[0].upper()):
        with pytest.raises(MaterialGone, match="is not a dealt label"):
            files.take_label(label)
    assert len(files.labels()) == 1   # nothing was claimed


def test_an_abort_crosses_as_a_code_only(pair):
    client, server = pair
    threading.Thread(target=server.abort).start()
    with pytest.raises(PeerAborted, match=r"the peer stopped: it failed \(its reasons stay on its side\)"):
        client.step(THREE, THREE)


def test_deployment_commands_end_mistakes_in_one_line(capsys, deployment, tmp_path):
    from .test_cli_errors import one_line_error
    plan, certs, dealer, server, _ = deployment
    path = str(plan.save(tmp_path / "p.mpcc"))
    host, port = server.address
    one_line_error(capsys, ["dealer", path], "give --listen HOST:PORT (deal live) or --out DIR --runs N")
    one_line_error(capsys, ["dealer", path, "--listen", "127.0.0.1:0"], "--listen needs --certs DIR")
    one_line_error(capsys, ["dealer", path, "--out", str(tmp_path / "d")], "--out needs --runs N")
    one_line_error(capsys, ["serve", path, "--listen", "nowhere", "--certs", str(certs), "--dealer", "x:1"],
                   "--listen 'nowhere': expected HOST:PORT")
    one_line_error(capsys, ["serve", path, "--listen", "127.0.0.1:0", "--certs", str(certs)],
                   "give --dealer HOST:PORT (a live dealer) or --material DIR")
    one_line_error(capsys, ["serve", path, "--listen", "127.0.0.1:0", "--certs", str(tmp_path), "--dealer", "x:1"],
                   "missing")
    one_line_error(capsys, ["run", path, "--certs", str(certs)], "--certs goes with --connect")
    one_line_error(capsys, ["run", path, "--connect", f"{host}:{port}", "--certs", str(certs), "--dealer",
                            "127.0.0.1:1"], "does not name its model")
    one_line_error(capsys, ["certs", str(certs)], "already holds")
