"""Which reviews dynamic int8 flips: the kdapp teacher's accuracy and agreement with fp32 over int8 variants.

torch's dynamic int8 quantizes each batch's activations with one scale per tensor, so the batch composition (kdapp's
CPU tokens-per-batch limit) changes which reviews flip; per-channel weights, an fp32 head and smoothing the
feed-forward output layers (SmoothQuant, kdapp's int8: kdapp/quantize.py) are the remedies tried here.
From the repo root, once benchmarks/accuracy.py has made checkpoints/cpu-scale/teacher, and with its int8
calibration (a run trained by kdapp carries one; for an older one, about 30 s):

    python -m kdapp int8-calibrate --model checkpoints/cpu-scale/teacher --data ../shared/data/imdb/train.parquet
    python benchmarks/int8_variants.py      # the 2,000 validation reviews of benchmarks/speed.py
    python benchmarks/int8_variants.py --alphas 0.5 0.75 0.85 1.0   # how SMOOTH_ALPHA was chosen

--alphas scores the smoothing strength by how far int8 moves the teacher's logits from fp32 (no labels) on 1,000
training reviews the teacher did not learn from (rows 2,000-2,999 of the seed split), not on the validation rows.

docs/speed.md quotes what it printed.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import kdapp  # noqa: F401  (OMP_WAIT_POLICY before torch)
import numpy as np
import torch
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

from kdapp.encoding import encode
from kdapp.inference import logits_from_ids, prepare_model
from kdapp.models import load_pair
from kdapp.quantize import quantize_int8, smooth

sys.path.insert(0, str(Path(__file__).parent))
from speed import DATA, seed_split_rows  # noqa: E402  (the same validation reviews as speed.py)

TEACHER = "checkpoints/cpu-scale/teacher"
VARIANTS = (("int8-pertensor", default_dynamic_qconfig, False),
            ("int8-pertensor-headfp32", default_dynamic_qconfig, True),
            ("int8-perchannel", per_channel_dynamic_qconfig, False),
            ("int8-perchannel-headfp32", per_channel_dynamic_qconfig, True))


def quantized(model, qconfig, fp32_head: bool):
    """Dynamic int8 of every nn.Linear; with fp32_head the pooler and classifier stay in fp32."""
    model = copy.deepcopy(model)
    spec = {name: qconfig for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and not (fp32_head and (name.startswith("classifier") or "pooler" in name))}
    return quantize_dynamic(model, spec, dtype=torch.qint8)


def choose_alpha(teacher, tokenizer, alphas: list[float]) -> None:
    """int8's distance from fp32 per smoothing strength, on held-out training reviews (no labels used)."""
    for name, x_max in teacher.kdapp_int8_maxima.items():  # why smooth: a few channels far above the rest
        print(f"{name}: input max {x_max.max():.1f}, median channel max {x_max.median():.2f}")
    train, _ = seed_split_rows(str(DATA), 3000, 1)
    ids = encode(tokenizer, list(train["text"])[2000:3000], 256)
    fp32 = logits_from_ids(teacher, ids, 0, 100)
    for alpha in [None, *alphas]:
        model = copy.deepcopy(teacher)
        if alpha is not None:
            smooth(model, teacher.kdapp_int8_maxima, alpha)
        logits = logits_from_ids(quantize_int8(model), ids, 0, 100)
        margin = np.abs(np.diff(logits, axis=-1) - np.diff(fp32, axis=-1)).mean()
        print(f"alpha {alpha or 'none (per-channel only)'}: {(logits.argmax(-1) != fp32.argmax(-1)).sum()} of "
              f"{len(ids)} predictions differ from fp32; mean |logit-margin change| {margin:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alphas", type=float, nargs="+", help="only compare these smoothing strengths")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
    teacher, tokenizer = load_pair(TEACHER)
    teacher.eval()
    if getattr(teacher, "kdapp_int8_maxima", None) is None:
        sys.exit(f"{TEACHER} has no int8 calibration: run python -m kdapp int8-calibrate (see the docstring)")
    if args.alphas:
        return choose_alpha(teacher, tokenizer, args.alphas)
    _, valid = seed_split_rows(str(DATA), 10, 2000)
    labels = np.asarray(valid["label"])
    ids = encode(tokenizer, list(valid["text"]), 256)

    def run(model, name, **kwargs):
        logits_from_ids(model, ids[:8], 0, 100, **kwargs)  # warm-up
        start = time.perf_counter()
        logits = logits_from_ids(model, ids, 0, 100, **kwargs)
        seconds = time.perf_counter() - start
        print(name, kwargs, f"{len(ids) / seconds:.1f} rev/s acc {100 * (logits.argmax(-1) == labels).mean():.2f}",
              flush=True)
        return logits

    fp32 = run(teacher, "fp32")
    for name, qconfig, fp32_head in VARIANTS:
        logits = run(quantized(teacher, qconfig, fp32_head), name)
        print("   agree with fp32", f"{100 * (logits.argmax(-1) == fp32.argmax(-1)).mean():.2f}")
    int8 = prepare_model(teacher, "int8", "cpu")
    logits = run(int8, f"int8-kdapp ({int8.kdapp_int8})")
    print("   agree with fp32", f"{100 * (logits.argmax(-1) == fp32.argmax(-1)).mean():.2f}")
    logits = run(int8, "int8-kdapp no-cap", max_tokens=None)
    print("   agree with fp32", f"{100 * (logits.argmax(-1) == fp32.argmax(-1)).mean():.2f}")
    run(int8, "int8-kdapp full-last", cls_only=False)


if __name__ == "__main__":
    main()
