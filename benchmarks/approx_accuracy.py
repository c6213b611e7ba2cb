"""Accuracy of each approximation preset on the pretrained all-MiniLM-L6-v2,
without retraining, by fixed-point emulation (``mpcc.Emulator``: the secure
run's arithmetic, in one thread):

- mean and worst cosine between the preset's sentence embeddings (mean
  pooling over the attention mask) and float64 torch's, over N sentences;
- each substitute's max error against the exact function, on its range
  (GeLU on [-8, 8]; softmax on rows of 128 scores drawn N(0, 3^2)), through
  the emulated protocol.

Presets that change the function (mpcformer's 2Quad and Quad) score low
until distillation; that is expected.

    python benchmarks/approx_accuracy.py [--sentences 200] [--batch 20] [--presets exact mpcformer]
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import time

import torch

import mpcc
from mpcc.frontend import reference_outputs
from mpcc.models import load_model
from mpcc.passes.approximate import PRESETS

SUBJECTS = ["the cat", "my neighbour", "a researcher", "the old train", "our team", "the river", "a small bird",
            "the new phone", "her brother", "the city council", "a quiet student", "the storm"]
VERBS = ["watched", "described", "ignored", "repaired", "painted", "followed", "measured", "remembered",
         "crossed", "announced"]
OBJECTS = ["the bright morning sky", "an encrypted message", "the long winter", "a private dataset",
           "the football match", "a cup of coffee", "the mountain road", "a broken window", "the quarterly report",
           "an ancient map", "the jazz concert", "a secure protocol"]


def sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct sentences from fixed word lists (no download)."""
    combos = list(itertools.product(SUBJECTS, VERBS, OBJECTS))
    random.Random(seed).shuffle(combos)
    if count > len(combos):
        raise SystemExit(f"at most {len(combos)} sentences")
    return [f"{s} {v} {o}." for s, v, o in combos[:count]]


def pooled(hidden, mask):
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def embedding_cosines(loaded, texts, preset, batch):
    """Cosine to float64 torch for every sentence, batches of equal padded length (one plan)."""
    tokens = loaded.tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    first = {"input_ids": ids[:batch], "attention_mask": mask[:batch]}
    plan = mpcc.compile(loaded.model, first, owners={"attention_mask": "public"}, approx=preset)
    emulator = mpcc.Emulator(plan, loaded.model.state_dict(), seed=0)
    cosines = []
    for start in range(0, len(texts), batch):
        inputs = {"input_ids": ids[start:start + batch], "attention_mask": mask[start:start + batch]}
        if len(inputs["input_ids"]) < batch:   # the plan's shape: pad the last batch with copies
            pad = batch - len(inputs["input_ids"])
            inputs = {k: torch.cat([v, v[:1].expand(pad, -1)]) for k, v in inputs.items()}
        hidden = emulator.run(inputs)[0]
        want = reference_outputs(loaded.model, inputs)[0]
        cos = torch.nn.functional.cosine_similarity(pooled(hidden, inputs["attention_mask"]),
                                                    pooled(want, inputs["attention_mask"]))
        cosines.extend(cos[:min(batch, len(texts) - start)].tolist())
    return torch.tensor(cosines)


class _Function(torch.nn.Module):
    """``function(x * w)`` with the server's w = 1: the client's x becomes a shared
    value, so the function runs as its protocol (a client's own value would not)."""

    def __init__(self, function, width):
        super().__init__()
        self.function = function
        self.weight = torch.nn.Parameter(torch.ones(width))

    def forward(self, x):
        return self.function(x * self.weight)


def substitute_errors(preset):
    """Max error of the preset's GeLU and softmax (emulated) against the exact functions."""
    grid = torch.linspace(-8, 8, 4001).reshape(1, -1)
    scores = torch.randn(64, 128, generator=torch.Generator().manual_seed(0)) * 3
    errors = {}
    for name, function, x in (("gelu on [-8, 8]", torch.nn.functional.gelu, grid),
                              ("softmax of N(0, 9) scores", lambda v: torch.softmax(v, -1), scores)):
        module = _Function(function, x.shape[-1])
        plan = mpcc.compile(module, (x,), approx=preset)
        got = mpcc.emulate(plan, (x,), module.state_dict())[0]
        errors[name] = float((got - function(x.double())).abs().max())
    return errors


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--presets", nargs="+", default=sorted(PRESETS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    loaded = load_model("minilm")
    texts = sentences(args.sentences)
    rows = []
    for preset in args.presets:
        start = time.perf_counter()
        cosines = embedding_cosines(loaded, texts, preset, args.batch)
        seconds = time.perf_counter() - start
        errors = substitute_errors(preset)
        rows.append({"preset": preset, "sentences": len(cosines), "mean_cosine": float(cosines.mean()),
                     "worst_cosine": float(cosines.min()), "emulation_s": round(seconds, 1),
                     "substitute_max_error": errors})
        print(f"{preset:10} cosine mean {cosines.mean():.5f} worst {cosines.min():.5f} over {len(cosines)} "
              f"sentences ({seconds:.0f} s); " + "; ".join(f"{k}: max error {v:.2e}" for k, v in errors.items()),
              flush=True)
    print(json.dumps(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
