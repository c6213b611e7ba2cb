"""Inputs beyond input_ids on the command line: ``--input NAME=VALUE`` and ``--owner NAME=...``,
on Hugging Face model directories saved from ``mpcc.zoo`` (loaded with ``from_pretrained``)."""
from __future__ import annotations

import numpy
import pytest
import torch
from safetensors.torch import save_file

import mpcc
from mpcc import zoo
from mpcc.cli import main
from mpcc.inputs import example_inputs
from mpcc.models import load_model

from .test_cli_errors import one_line_error

PIXELS = (1, 3, 16, 16)   # the zoo's ViT: 3 channels, 16x16 images


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """``model_dir(family)``: a directory holding the zoo's tiny model, saved once per module."""
    saved = {}

    def save(family: str) -> str:
        if family not in saved:
            model, _ = zoo.build(family)
            path = tmp_path_factory.mktemp(family)
            model.save_pretrained(path)
            saved[family] = str(path)
        return saved[family]
    return save


def ok(capsys, argv) -> str:
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if argv[0] in ("run", "interpret"):
        assert out.splitlines()[-1].startswith("OK: max abs error"), out
    return out


def test_bart_takes_named_decoder_ids(capsys, model_dir):
    ok(capsys, ["run", model_dir("bart"), "--input", "decoder_input_ids=2,5,7", "--input", "3 4 5 6"])


def test_bart_makes_up_decoder_ids_from_the_start_token(capsys, model_dir, tmp_path):
    loaded = load_model(model_dir("bart"))
    inputs = example_inputs(loaded, seq_len=6)
    assert list(inputs) == ["input_ids", "decoder_input_ids"] and inputs["input_ids"].shape == (1, 6)
    assert inputs["decoder_input_ids"].shape == (1, 4)
    assert inputs["decoder_input_ids"][0, 0] == loaded.model.config.decoder_start_token_id
    plan_file = tmp_path / "bart.mpcc"
    out = ok(capsys, ["compile", model_dir("bart"), "--seq", "6", "-o", str(plan_file)])
    assert "(input_ids [1, 6], decoder_input_ids [1, 4])" in out
    assert mpcc.load(plan_file).inputs == {"input_ids": "client", "decoder_input_ids": "client"}


def _input_nodes(path):
    return {node.name: (node.attrs["owner"], node.type.vis, node.type.shape) for node in mpcc.load(path).graph.inputs}


def test_owner_public_token_types_and_positions_reach_the_plan(capsys, model_dir, tmp_path):
    plan_file = tmp_path / "bert.mpcc"
    ok(capsys, ["compile", model_dir("bert"), "-o", str(plan_file), "--input", "1,2,3,4",
                "--input", "token_type_ids=0,0,1,1", "--owner", "token_type_ids=public", "--owner",
                "position_ids=public"])   # position_ids: named by --owner alone, so made up (0..3)
    assert _input_nodes(plan_file) == {"input_ids": ("client", "client", (1, 4)),
                                       "token_type_ids": ("public", "public", (1, 4)),
                                       "position_ids": ("public", "public", (1, 4))}
    ok(capsys, ["run", str(plan_file)])   # every input of the plan made up with its shape
    ok(capsys, ["run", str(plan_file), "--input", "position_ids=3 2 1 0"])


def test_bert_token_types_run_securely(capsys, model_dir):
    ok(capsys, ["run", model_dir("bert"), "--input", "token_type_ids=0 1 1", "--input", "input_ids=5 6 7",
                "--owner", "token_type_ids=public"])
    ok(capsys, ["interpret", model_dir("bert"), "--seq", "5", "--owner", "token_type_ids=client"])


def test_vit_runs_with_no_inputs_and_random_pixels(capsys, model_dir, tmp_path):
    ok(capsys, ["run", model_dir("vit")])
    ok(capsys, ["interpret", model_dir("vit"), "--input", "pixel_values=random"])
    plan_file = tmp_path / "vit.mpcc"
    out = ok(capsys, ["compile", model_dir("vit"), "-o", str(plan_file)])
    assert f"(pixel_values {list(PIXELS)})" in out
    assert _input_nodes(plan_file) == {"pixel_values": ("client", "client", PIXELS)}
    ok(capsys, ["run", str(plan_file)])


def _write(path, tensor):
    if path.suffix == ".npy":
        numpy.save(path, tensor.numpy())
    elif path.suffix == ".safetensors":
        save_file({"pixel_values": tensor}, str(path))
    else:
        torch.save(tensor, path)
    return str(path)


@pytest.mark.parametrize("name, shape", [("x.pt", PIXELS), ("x.npy", PIXELS), ("x.safetensors", PIXELS),
                                         ("unbatched.pt", PIXELS[1:])])
def test_pixels_from_a_file(model_dir, tmp_path, name, shape):
    pixels = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    inputs = example_inputs(load_model(model_dir("vit")), {"pixel_values": _write(tmp_path / name, pixels)})
    assert torch.equal(inputs["pixel_values"], pixels.reshape(PIXELS))


def test_vit_runs_on_pixels_from_a_pt_file(capsys, model_dir, tmp_path):
    path = _write(tmp_path / "image.pt", torch.randn(PIXELS))
    ok(capsys, ["interpret", model_dir("vit"), "--input", f"pixel_values={path}"])


@pytest.mark.parametrize("family, argv, phrase", [
    ("bert", ["--input", "foo=1"], "unknown input 'foo': "),
    ("bert", ["--owner", "foo=public"],
     "(BertModel) takes input_ids, attention_mask, token_type_ids, position_ids"),
    ("bert", ["--owner", "token_type_ids=everyone"], "--owner token_type_ids=everyone: the owner must be one of "
                                                     "public, client, server"),
    ("bert", ["--owner", "public"], "--owner takes NAME=public|client|server, not 'public'"),
    ("bert", ["--input", "token_type_ids=zero"], "token_type_ids takes integers like '0 1 2', not 'zero'"),
    ("bert", ["--input", "1 2", "--input", "token_type_ids=0 5"], "token_type_ids must lie in [0, 2); got 0..5"),
    ("bert", ["--input", "1 2 3", "--input", "token_type_ids=0 1"],
     "token_type_ids has shape [1, 2] and input_ids [1, 3]; they must match"),
    ("bert", ["--input", "1 2", "--input", "input_ids=3 4"], "--input gives input_ids twice"),
    ("bert", ["--input", "hello"], "has no tokenizer; pass token ids like '1 2 3'"),
    ("bert", ["--input", "1 2", "--input", "attention_mask=1 0"], "declare the mask input public"),
    ("bart", ["--input", "decoder_input_ids=2,500"], "token ids must lie in [0, 120); got 2..500"),
    ("bart", ["--input", "decoder_input_ids=" + " ".join(["2"] * 65)], "takes at most 64 positions"),
    ("vit", ["--input", "pixel_values=blue"], "pixel_values takes 'random' or a .pt, .pth, .npy or .safetensors"),
    ("vit", ["--input", "pixel_values=missing.pt"], "pixel_values: no such file: missing.pt"),
    ("vit", ["--input", "1 2 3"], "unknown input 'input_ids': "),
    ("vit", ["--seq", "4"], "--seq sets the length of random token ids, and "),
])
def test_input_mistakes_are_one_line(capsys, model_dir, family, argv, phrase):
    one_line_error(capsys, ["run", model_dir(family), *argv], phrase)


@pytest.mark.parametrize("tensor, phrase", [
    (torch.randn(1, 3, 8, 8), "pixel_values has shape [1, 3, 8, 8] and "),
    (torch.ones(*PIXELS, dtype=torch.long), "holds torch.int64 values and pixel_values takes real numbers"),
    (torch.full(PIXELS, float("nan")), "pixel_values holds NaN or infinite values"),
])
def test_bad_pixel_files_are_one_line(capsys, model_dir, tmp_path, tensor, phrase):
    path = _write(tmp_path / "bad.pt", tensor)
    line = one_line_error(capsys, ["run", model_dir("vit"), "--input", f"pixel_values={path}"], phrase)
    assert line.endswith(f"takes {list(PIXELS)}") or "shape" not in phrase


def test_a_damaged_file_is_one_line(capsys, model_dir, tmp_path):
    path = tmp_path / "image.npy"
    path.write_text("not numpy")
    one_line_error(capsys, ["run", model_dir("vit"), "--input", f"pixel_values={path}"], "pixel_values: cannot read")


@pytest.mark.parametrize("command", ["compile", "dump", "interpret", "run", "cost"])
def test_every_model_command_takes_the_options(capsys, model_dir, tmp_path, command):
    extra = ["-o", str(tmp_path / "x.mpcc")] if command == "compile" else []
    one_line_error(capsys, [command, model_dir("bert"), "--owner", "nope=public", *extra], "unknown input 'nope'")


def test_plan_inputs_keep_the_plan_names_shapes_and_owners(capsys, model_dir, tmp_path):
    plan_file = str(tmp_path / "bert.mpcc")
    ok(capsys, ["compile", model_dir("bert"), "--seq", "4", "-o", plan_file])
    one_line_error(capsys, ["run", plan_file, "--input", "token_type_ids=0 0 0 0"],
                   "the plan takes no input 'token_type_ids'; it takes input_ids")
    one_line_error(capsys, ["run", plan_file, "--input", "1 2 3"],
                   "input_ids has shape [1, 3] and the plan was compiled for [1, 4]")
    one_line_error(capsys, ["run", plan_file, "--owner", "input_ids=public"],
                   "fixes who holds each input (input_ids=client); --owner needs a model")
    one_line_error(capsys, ["cost", plan_file, "--owner", "input_ids=public"], "--owner choose a model's example")
