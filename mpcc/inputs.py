"""A model's inputs by name: token ids, token types, positions, masks and pixel values.

Each comes from a value the user gave (``"1 2 3"``, text for the tokenizer,
``random``, or a ``.pt``/``.npy``/``.safetensors`` file) or is made up from the
model's config with a fixed seed, so that ``mpcc run MODEL`` needs no inputs:
random token ids, the decoder start token then random ids, zero token types,
positions 0..n-1, all-ones masks, standard normal pixels.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping

import torch

if TYPE_CHECKING:
    from .models import LoadedModel

__all__ = ["InputError", "INPUTS", "accepted_inputs", "example_inputs", "plan_inputs", "TENSOR_FILES"]

TENSOR_FILES = (".pt", ".pth", ".npy", ".safetensors")
DECODER_LENGTH = 4   # made-up decoder_input_ids: the start token and 3 random ids


class InputError(ValueError):
    """Inputs the model cannot take: an unknown name, a malformed value, ids out of range, a wrong shape."""


def _random_ids(loaded: LoadedModel, shape, generator) -> torch.Tensor:
    if not loaded.vocab_size:
        raise InputError(f"{loaded.name} has no vocab_size in its config; give the token ids")
    return torch.randint(0, loaded.vocab_size, shape, generator=generator)


def _decoder_ids(loaded: LoadedModel, shape, generator) -> torch.Tensor:
    config = loaded.model.config
    start = next((t for t in (getattr(config, "decoder_start_token_id", None), config.bos_token_id) if t is not None),
                 0)
    ids = _random_ids(loaded, shape, generator)
    ids[..., 0] = start
    return ids


def _image_shape(loaded: LoadedModel, seq_len: int) -> tuple[int, ...] | None:
    config = loaded.model.config
    size = getattr(config, "image_size", None)
    if size is None:
        return None
    height, width = (size, size) if isinstance(size, int) else size
    return 1, getattr(config, "num_channels", 3), height, width


@dataclass(frozen=True)
class InputKind:
    """What one named input holds and how to make one up."""
    integer: bool
    fill: Callable[[LoadedModel, tuple, torch.Generator], torch.Tensor]
    bound: Callable[[LoadedModel], int | None] = lambda loaded: None   # integers lie in [0, bound)
    shape: Callable[[LoadedModel, int], tuple | None] | None = None   # of a made-up value, from --seq
    follows: str | None = None   # the input whose shape it shares (token types follow input_ids)
    tokens: bool = False         # token ids: text is tokenised, the length is bounded by the positions


def _long(value):
    return lambda loaded, shape, generator: torch.full(shape, value, dtype=torch.long)


INPUTS: dict[str, InputKind] = {
    "input_ids": InputKind(True, _random_ids, lambda loaded: loaded.vocab_size or None,
                           lambda loaded, seq: (1, seq), tokens=True),
    "decoder_input_ids": InputKind(True, _decoder_ids, lambda loaded: loaded.vocab_size or None,
                                   lambda loaded, seq: (1, DECODER_LENGTH), tokens=True),
    "token_type_ids": InputKind(True, _long(0), lambda loaded: getattr(loaded.model.config, "type_vocab_size", None),
                                follows="input_ids"),
    "position_ids": InputKind(True, lambda loaded, shape, generator: torch.arange(shape[-1]).expand(shape).clone(),
                              lambda loaded: loaded.max_positions, follows="input_ids"),
    "attention_mask": InputKind(True, _long(1), lambda loaded: 2, follows="input_ids"),
    "decoder_attention_mask": InputKind(True, _long(1), lambda loaded: 2, follows="decoder_input_ids"),
    "pixel_values": InputKind(False, lambda loaded, shape, generator: torch.randn(shape, generator=generator),
                              shape=_image_shape),
}


def accepted_inputs(model: torch.nn.Module) -> list[str]:
    """The parameters of ``model.forward`` that mpcc can build, in the forward's order."""
    names = [name for name in inspect.signature(model.forward).parameters if name in INPUTS]
    return [name for name in names if INPUTS[name].follows in (None, *names)]


def _required(loaded: LoadedModel, accepted: list[str]) -> list[str]:
    """What every call gets: token ids (or pixels), and decoder ids for an encoder-decoder."""
    primary = next((name for name in ("input_ids", "pixel_values") if name in accepted), None)
    if primary is None:
        raise InputError(f"{loaded.name} ({type(loaded.model).__name__}) takes neither input_ids nor pixel_values")
    decoder = getattr(loaded.model.config, "is_encoder_decoder", False) and "decoder_input_ids" in accepted
    return [primary] + ["decoder_input_ids"] * decoder


def _made_up(loaded: LoadedModel, name: str, shape, seed: int) -> torch.Tensor:
    """A value from the input's own generator: the same whichever other inputs there are."""
    if shape is None:
        raise InputError(f"mpcc cannot make up {name} for {loaded.name}; give --input {name}=FILE")
    generator = torch.Generator().manual_seed(seed + list(INPUTS).index(name))
    return INPUTS[name].fill(loaded, tuple(shape), generator)


def _read_file(path: Path, name: str) -> torch.Tensor:
    if not path.is_file():
        raise InputError(f"{name}: no such file: {path}")
    try:
        if path.suffix == ".npy":
            import numpy
            return torch.from_numpy(numpy.load(path, allow_pickle=False))
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            found = load_file(str(path))
        else:
            found = torch.load(path, weights_only=True)
    except Exception as error:   # numpy, safetensors and pickle each raise their own kinds
        raise InputError(f"{name}: cannot read {path}: {str(error).splitlines()[0] if str(error) else error!r}") \
            from None
    if isinstance(found, torch.Tensor):
        return found
    tensors = {k: v for k, v in found.items() if isinstance(v, torch.Tensor)} if isinstance(found, dict) else {}
    if name in tensors or len(tensors) == 1:
        return tensors.get(name, next(iter(tensors.values()), None))
    raise InputError(f"{name}: {path} holds no tensor named {name!r} (found: {', '.join(tensors) or 'none'})")


def _parse(loaded: LoadedModel, name: str, text: str, seed: int) -> torch.Tensor:
    """The tensor ``text`` stands for: a tensor file, ``random`` (reals), ids like ``1 2 3``, or text."""
    kind = INPUTS[name]
    if text.endswith(TENSOR_FILES):
        value = _read_file(Path(text), name)
        if kind.integer != (not value.is_floating_point()):
            raise InputError(f"{name}: {text} holds {value.dtype} values and {name} takes "
                             f"{'integers' if kind.integer else 'real numbers'}")
        return value.long() if kind.integer else value.float()
    if not kind.integer:
        if text == "random":
            return _made_up(loaded, name, kind.shape(loaded, 0), seed)
        raise InputError(f"{name} takes 'random' or a {', '.join(TENSOR_FILES[:-1])} or {TENSOR_FILES[-1]} file, "
                         f"not {text[:40]!r}")
    parts = text.replace(",", " ").split()
    if parts and all(p.lstrip("-").isdigit() for p in parts):
        return torch.tensor([[int(p) for p in parts]])
    if not kind.tokens:
        raise InputError(f"{name} takes integers like '0 1 2', not {text[:40]!r}")
    if loaded.tokenizer is None:
        raise InputError(f"{loaded.name} has no tokenizer; pass token ids like '1 2 3'")
    return loaded.tokenizer(text, return_tensors="pt")["input_ids"]


def _check(loaded: LoadedModel, name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` with a batch dimension, or an ``InputError`` for what the model cannot take."""
    kind = INPUTS[name]
    expected = kind.shape(loaded, 1) if kind.shape and not kind.integer else None   # pixels: from the config
    if value.dim() == (len(expected) - 1 if expected else 1):   # a file without the batch dimension
        value = value.unsqueeze(0)
    if value.numel() == 0:
        raise InputError(f"{name} is empty; give at least one " + ("token" if kind.tokens else "value"))
    if expected and tuple(value.shape[1:]) != expected[1:]:
        raise InputError(f"{name} has shape {list(value.shape)} and {loaded.name} takes {list(expected)}")
    if not kind.integer and not torch.isfinite(value).all():
        raise InputError(f"{name} holds NaN or infinite values")
    bound = kind.bound(loaded) if kind.integer else None
    if bound and (value.min() < 0 or value.max() >= bound):
        what = "token ids" if kind.tokens else name
        raise InputError(f"{what} must lie in [0, {bound}); got {value.min()}..{value.max()}")
    limit = loaded.max_positions
    if kind.tokens and limit and value.shape[-1] > limit:
        raise InputError(f"{loaded.name} takes at most {limit} positions and {name} has {value.shape[-1]} "
                         f"tokens; shorten it")
    return value


def _check_names(loaded: LoadedModel, accepted: list[str], names: Iterable[str]) -> None:
    for name in names:
        if name not in accepted:
            raise InputError(f"unknown input {name!r}: {loaded.name} ({type(loaded.model).__name__}) takes "
                             f"{', '.join(accepted)}")


def example_inputs(loaded: LoadedModel, values: Mapping[str, str] | None = None, *, seq_len: int | None = None,
                   text: str | None = None, names: Iterable[str] = (), seed: int = 0) -> dict[str, torch.Tensor]:
    """The model's inputs, by name: those in ``values`` (name -> text, see ``--input``), made up for
    ``names`` and for what every call needs (token ids of length ``seq_len``, default: the preset's, or
    pixels; decoder ids for an encoder-decoder). ``text`` is ``values["input_ids"]``.

    Example:
        >>> from mpcc.models import load_model
        >>> {k: list(v.shape) for k, v in example_inputs(load_model("tiny-bert"), {"input_ids": "1 2 3"},
        ...                                               names=["token_type_ids"]).items()}
        {'input_ids': [1, 3], 'token_type_ids': [1, 3]}
    """
    values = dict(values or {}, **({} if text is None else {"input_ids": text}))
    names = list(names)
    accepted = accepted_inputs(loaded.model)
    _check_names(loaded, accepted, [*values, *names])
    wanted = set(_required(loaded, accepted)) | set(values) | set(names)
    if seq_len is not None and "input_ids" not in accepted:
        raise InputError(f"--seq sets the length of random token ids, and {loaded.name} takes no input_ids")
    order = list(INPUTS)
    inputs = {}
    for name in sorted(wanted, key=lambda n: (INPUTS[n].follows is not None, order.index(n))):   # followed first
        follows = INPUTS[name].follows
        if follows and follows not in inputs:
            raise InputError(f"{name} takes the shape of {follows}; give {follows} too")
        if name in values:
            value = _parse(loaded, name, values[name], seed)
        else:
            shape = inputs[follows].shape if follows else INPUTS[name].shape(loaded, _length(loaded, seq_len))
            value = _made_up(loaded, name, shape, seed)
        inputs[name] = value = _check(loaded, name, value)
        if follows and value.shape != inputs[follows].shape:
            raise InputError(f"{name} has shape {list(value.shape)} and {follows} {list(inputs[follows].shape)}; "
                             f"they must match")
    return {name: inputs[name] for name in accepted if name in inputs}


def _length(loaded: LoadedModel, seq_len: int | None) -> int:
    length = loaded.seq_len if seq_len is None else seq_len
    limit = loaded.max_positions
    if length < 1:
        raise InputError(f"the sequence length must be at least 1, not {length}")
    if limit and length > limit:
        raise InputError(f"{loaded.name} takes at most {limit} positions, not {length}; use --seq {limit} or less")
    return length


def plan_inputs(loaded: LoadedModel, shapes: Mapping[str, tuple], values: Mapping[str, str] | None = None, *,
                seq_len: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs with exactly a plan's names and ``shapes``: those in ``values`` parsed, the rest made up;
    ``seq_len``, when given, must be the plan's."""
    values = dict(values or {})
    for name in values:
        if name not in shapes:
            raise InputError(f"the plan takes no input {name!r}; it takes {', '.join(shapes)}")
    for name in shapes:
        if name not in INPUTS:
            raise InputError(f"mpcc cannot build the plan's input {name!r}; it builds {', '.join(INPUTS)}")
    inputs = {}
    for name, shape in shapes.items():
        if name in values:
            value = _parse(loaded, name, values[name], seed)
        else:
            value = _made_up(loaded, name, (1, seq_len) if name == "input_ids" and seq_len else shape, seed)
        value = _check(loaded, name, value)
        if tuple(value.shape) != tuple(shape):
            raise InputError(f"{name} has shape {list(value.shape)} and the plan was compiled for {list(shape)}")
        inputs[name] = value
    return inputs
