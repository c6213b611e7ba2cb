"""One tiny random-weight model per Hugging Face family: what the coverage table and tests run.

Each entry builds a model from a small config with a fixed seed (nothing is
downloaded) and its example inputs. The configs keep each family's defining
parts: grouped-query attention (Llama, Qwen2, Mistral), a sliding window
shorter than the sequence (Mistral), partial rotary (Phi), local attention
(GPT-Neo), relative buckets (T5), disentangled attention (DeBERTa-v2), an
encoder-decoder (BART) and patch embeddings (ViT). Further members of the families
(Qwen3, Gemma, Phi-3, StableLM, Falcon, GPT-J, XLM-RoBERTa, MobileBERT) check that
mpcc is built for the family, not for the list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Family", "FAMILIES", "build"]

VOCAB, HIDDEN, LAYERS, HEADS, FFN, POSITIONS, SEQ = 120, 32, 2, 4, 64, 64, 8


@dataclass(frozen=True)
class Family:
    name: str
    model_class: str            # transformers class
    config: Callable[[], object]
    inputs: Callable[[torch.Generator], dict]
    owners: dict | None = None  # inputs that are not the client's


def _ids(generator, seq=SEQ, name="input_ids"):
    return {name: torch.randint(0, VOCAB, (1, seq), generator=generator)}


def _config(name: str, **kwargs):
    import transformers
    return getattr(transformers, name)(**kwargs)


def _common(**extra):
    return dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                intermediate_size=FFN, max_position_embeddings=POSITIONS, **extra)


def _decoder(**extra):   # the LLaMA-like families: grouped-query attention, 2 KV heads
    # no pad token: its embedding row would be zeros, whose RMSNorm variance (eps alone) is below rsqrt's domain
    return _common(num_key_value_heads=2, bos_token_id=0, eos_token_id=0, **extra)


def _vit_inputs(generator):
    return {"pixel_values": torch.randn(1, 3, 16, 16, generator=generator)}


def _bart_inputs(generator):
    return {**_ids(generator), **_ids(generator, seq=5, name="decoder_input_ids")}


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("bert", "BertModel", lambda: _config("BertConfig", **_common()), _ids),
    Family("roberta", "RobertaModel", lambda: _config("RobertaConfig", **_common(pad_token_id=1)), _ids),
    Family("albert", "AlbertModel", lambda: _config("AlbertConfig", embedding_size=16, **_common()), _ids),
    Family("electra", "ElectraModel", lambda: _config("ElectraConfig", embedding_size=16, **_common()), _ids),
    Family("distilbert", "DistilBertModel", lambda: _config(
        "DistilBertConfig", vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=FFN,
        max_position_embeddings=POSITIONS), _ids),
    Family("deberta-v2", "DebertaV2Model", lambda: _config(
        "DebertaV2Config", relative_attention=True, position_buckets=16, max_relative_positions=POSITIONS,
        pos_att_type=["p2c", "c2p"], **_common()), _ids),
    Family("gpt2", "GPT2LMHeadModel", lambda: _config(
        "GPT2Config", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
        bos_token_id=0, eos_token_id=0), _ids),
    Family("gpt-neo", "GPTNeoForCausalLM", lambda: _config(
        "GPTNeoConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS, attention_types=[[["global", "local"], 1]],
        window_size=4, bos_token_id=0, eos_token_id=0), _ids),
    Family("opt", "OPTForCausalLM", lambda: _config(
        "OPTConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        ffn_dim=FFN, word_embed_proj_dim=HIDDEN, max_position_embeddings=POSITIONS, bos_token_id=0,
        eos_token_id=0, pad_token_id=1), _ids),
    Family("llama", "LlamaForCausalLM", lambda: _config("LlamaConfig", **_decoder()), _ids),
    Family("qwen2", "Qwen2ForCausalLM", lambda: _config("Qwen2Config", **_decoder()), _ids),
    Family("mistral", "MistralForCausalLM", lambda: _config("MistralConfig", sliding_window=4, **_decoder()),
           _ids),
    Family("phi", "PhiForCausalLM", lambda: _config("PhiConfig", **_decoder()), _ids),
    Family("qwen3", "Qwen3ForCausalLM", lambda: _config("Qwen3Config", head_dim=HIDDEN // HEADS, **_decoder()), _ids),
    Family("gemma", "GemmaForCausalLM", lambda: _config("GemmaConfig", head_dim=HIDDEN // HEADS, **_decoder()), _ids),
    Family("phi3", "Phi3ForCausalLM", lambda: _config("Phi3Config", pad_token_id=None, **_decoder()), _ids),
    Family("stablelm", "StableLmForCausalLM", lambda: _config("StableLmConfig", **_decoder()), _ids),
    Family("falcon", "FalconForCausalLM", lambda: _config(
        "FalconConfig", vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        bos_token_id=0, eos_token_id=0), _ids),
    Family("gpt-j", "GPTJForCausalLM", lambda: _config(
        "GPTJConfig", vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS,
        rotary_dim=4, bos_token_id=0, eos_token_id=0), _ids),
    Family("xlm-roberta", "XLMRobertaModel", lambda: _config("XLMRobertaConfig", **_common(pad_token_id=1)), _ids),
    Family("mobilebert", "MobileBertModel", lambda: _config(
        "MobileBertConfig", embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, **_common()), _ids),
    Family("t5-encoder", "T5EncoderModel", lambda: _config(
        "T5Config", vocab_size=VOCAB, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS,
        num_heads=HEADS, relative_attention_num_buckets=8, relative_attention_max_distance=16), _ids),
    Family("bart", "BartForConditionalGeneration", lambda: _config(
        "BartConfig", vocab_size=VOCAB, d_model=HIDDEN, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
        max_position_embeddings=POSITIONS, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=2, forced_eos_token_id=None), _bart_inputs),
    Family("vit", "ViTModel", lambda: _config(
        "ViTConfig", hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, image_size=16, patch_size=4, num_channels=3), _vit_inputs),
]}


def build(name: str, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """The family's tiny model (eval mode, weights from ``seed``) and its example inputs."""
    import transformers
    family = FAMILIES[name]
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(family.config()).eval()
    return model, family.inputs(torch.Generator().manual_seed(seed))


def main(argv=None) -> int:
    """``python -m mpcc.zoo FAMILY DIRECTORY``: save a family's tiny model as a Hugging Face model
    directory (``save_pretrained``), to try ``mpcc run DIRECTORY`` on it."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m mpcc.zoo", description=main.__doc__.splitlines()[0])
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    model, _ = build(args.family)
    model.save_pretrained(args.directory)
    print(f"saved a tiny random {FAMILIES[args.family].model_class} to {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
