"""Plan files and the command line, success and failure paths."""
from __future__ import annotations

import pytest
import torch

import mpcc
from mpcc.cli import main


@pytest.fixture
def plan_file(tmp_path, tiny_bert):
    from .conftest import token_ids
    plan = mpcc.compile(tiny_bert, {"input_ids": token_ids(4, 120)})
    return plan, plan.save(tmp_path / "bert.mpcc")


def test_plan_round_trip_has_no_weights(plan_file, tiny_bert):
    plan, path = plan_file
    loaded = mpcc.load(path)
    assert loaded.graph == plan.graph and loaded.hash == plan.hash and loaded.frac_bits == 16
    text = path.read_text()
    weight = tiny_bert.state_dict()["encoder.layer.0.attention.self.query.weight"]
    assert f"{weight[0, 0].item()!r}" not in text
    assert set(loaded.weight_keys) <= set(tiny_bert.state_dict())
    assert loaded.inputs == {"input_ids": "client"}


@pytest.mark.parametrize("damage, message", [
    (lambda t: t[: len(t) // 2], "checksum"),
    (lambda t: t.replace("mpcc-plan 2", "mpcc-plan 99", 1), "version 99"),
    (lambda t: t.replace("linear", "lineal", 1), "checksum"),
    (lambda t: "hello\n" + t, "not an mpcc plan"),
    (lambda t: t.replace("{", "{{", 1), "metadata"),
])
def test_damaged_plan_files_are_refused(plan_file, damage, message):
    _, path = plan_file
    path.write_text(damage(path.read_text()))
    with pytest.raises(mpcc.PlanFormatError, match=message):
        mpcc.load(path)


def test_binary_file_is_not_a_plan(tmp_path):
    path = tmp_path / "x.mpcc"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(mpcc.PlanFormatError):
        mpcc.load(path)


def test_interpreter_checks_inputs_and_weights(tiny_bert):
    plan = mpcc.compile(tiny_bert, {"input_ids": torch.zeros(1, 4, dtype=torch.long)})
    weights = tiny_bert.state_dict()
    with pytest.raises(mpcc.InterpretError, match="shape"):
        mpcc.interpret(plan.graph, {"input_ids": torch.zeros(1, 5, dtype=torch.long)}, weights)
    with pytest.raises(mpcc.InterpretError, match="missing"):
        mpcc.interpret(plan.graph, {}, weights)
    with pytest.raises(mpcc.InterpretError, match="unexpected"):
        mpcc.interpret(plan.graph, {"input_ids": torch.zeros(1, 4, dtype=torch.long), "x": torch.ones(1)}, weights)
    partial = {k: v for k, v in weights.items() if "pooler" not in k}
    with pytest.raises(mpcc.InterpretError, match="missing weight 'pooler.dense"):
        mpcc.interpret(plan.graph, {"input_ids": torch.zeros(1, 4, dtype=torch.long)}, partial)


def test_cli_compile_dump_interpret(tmp_path, capsys):
    out = tmp_path / "p.mpcc"
    assert main(["compile", "tiny-gpt2", "-o", str(out), "--seq", "6"]) == 0
    assert "compiled tiny-gpt2 (seq 6)" in capsys.readouterr().out
    assert main(["dump", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("mpcc.graph v1") and "one_hot" in text
    assert main(["dump", "tiny-gpt2", "--seq", "6", "--after", "import"]) == 0
    assert "cumsum" in capsys.readouterr().out
    assert main(["dump", "tiny-gpt2", "--seq", "6", "--after", "fold_public", "--summary"]) == 0
    assert "ops by kind" in capsys.readouterr().out
    assert main(["interpret", "tiny-bert", "--input", "1 2 3 4"]) == 0
    assert "OK: max abs error" in capsys.readouterr().out
    assert main(["ops", "--aten"]) == 0
    assert "aten.scaled_dot_product_attention.default" in capsys.readouterr().out


def test_cli_runs_a_compiled_plan_file(tmp_path, capsys):
    out = tmp_path / "bert.mpcc"
    assert main(["compile", "tiny-bert", "-o", str(out), "--seq", "5"]) == 0
    capsys.readouterr()
    assert main(["run", str(out)]) == 0
    text = capsys.readouterr().out
    assert "max |secure - torch|" in text and "rounds" in text
    assert main(["run", str(out), "--seq", "7"]) == 2   # inputs must have the plan's shapes
    assert "input_ids" in capsys.readouterr().err
    assert main(["run", str(out), "--weights", "tiny-gpt2"]) == 2   # weights of another model
    assert "weight" in capsys.readouterr().err


def test_cli_judges_a_substituted_plan_against_its_own_meaning(tmp_path, capsys):
    out = tmp_path / "fast.mpcc"
    assert main(["compile", "tiny-bert", "--approx", "mpcformer", "-o", str(out), "--seq", "5"]) == 0
    capsys.readouterr()
    assert main(["run", str(out)]) == 0   # 2Quad and Quad are far from torch, the secure run is close to the plan
    text = capsys.readouterr().out
    assert "vs the plan's plaintext meaning (approx mpcformer)" in text and "|secure - torch|" in text
    assert main(["run", "tiny-bert", "--seq", "5", "--approx", "nope"]) == 2


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["compile", "no-such-model", "-o", str(tmp_path / "x")]) == 2
    assert "not a preset" in capsys.readouterr().err
    assert main(["interpret", "tiny-bert", "--input", "1 2 99999"]) == 2
    assert "token ids must lie in" in capsys.readouterr().err
    bad = tmp_path / "bad.mpcc"
    bad.write_text("mpcc-plan 7\n{}\n")
    assert main(["dump", str(bad)]) == 2
    assert "version 7" in capsys.readouterr().err
    assert main(["dump", "tiny-bert", "--after", "nope"]) == 2
    assert "unknown pass" in capsys.readouterr().err


def _edit_metadata(path, **changes):
    import json
    header, meta_line, body = path.read_text().split("\n", 2)
    meta = json.loads(meta_line)
    meta.update(changes)
    path.write_text(f"{header}\n{json.dumps(meta)}\n{body}")
    return meta


@pytest.mark.parametrize("setting, value", [("frac_bits", 20), ("pipeline", ("import",)),
                                            ("info", {"unused_weights": ["x"]})])
def test_every_setting_is_in_the_hash(plan_file, setting, value):
    """An edited setting under the old checksum is refused; a plan with it has another hash."""
    plan, path = plan_file
    _edit_metadata(path, **{setting: list(value) if isinstance(value, tuple) else value})
    with pytest.raises(mpcc.PlanFormatError, match="checksum"):
        mpcc.load(path)
    settings = {"approx": plan.approx, "pipeline": plan.pipeline, "frac_bits": plan.frac_bits, "info": plan.info}
    assert mpcc.Plan(plan.graph, **{**settings, setting: value}).hash != plan.hash
    assert mpcc.Plan(plan.graph, **settings).hash == plan.hash


@pytest.mark.parametrize("changes, message", [
    ({"frac_bits": 21}, "frac_bits must be an integer in \\[1, 20\\]"),
    ({"frac_bits": "16"}, "frac_bits must be an integer"),
    ({"frac_bits": 16.0}, "frac_bits must be an integer"),
    ({"approx": "magic"}, "approx must be a preset"),
    ({"protocol": 0}, "protocol version 0"),
    ({"pipeline": "fold_public"}, "pipeline must be a list"),
    ({"info": []}, "info must be a JSON object"),
    ({"extra": 1}, "exactly the keys"),
])
def test_bad_metadata_is_refused_even_with_a_valid_checksum(plan_file, changes, message):
    from mpcc.plan import _digest
    _, path = plan_file
    meta = _edit_metadata(path, **changes)
    settings = {k: v for k, v in meta.items() if k != "sha256"}
    body = path.read_text().split("\n", 2)[2]
    _edit_metadata(path, sha256=_digest(settings, body))
    with pytest.raises(mpcc.PlanFormatError, match=message):
        mpcc.load(path)


def test_compile_with_the_overflow_check(tmp_path):
    path = tmp_path / "checked.mpcc"
    assert main(["compile", "tiny-bert", "--seq", "4", "-o", str(path), "--overflow-check"]) == 0
    assert mpcc.load(path).overflow_check
    assert main(["compile", "tiny-bert", "--seq", "4", "-o", str(tmp_path / "plain.mpcc")]) == 0
    assert not mpcc.load(tmp_path / "plain.mpcc").overflow_check
