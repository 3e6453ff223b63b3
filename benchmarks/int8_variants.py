"""Which reviews dynamic int8 flips: the kdapp teacher's accuracy and agreement with fp32 over int8 variants.

torch's dynamic int8 quantizes each batch's activations with one scale per tensor, so the batch composition (kdapp's
CPU tokens-per-batch limit) changes which reviews flip; per-channel weights and an fp32 head are the usual remedies.
From the repo root, once benchmarks/accuracy.py has made checkpoints/cpu-scale/teacher (about 4 minutes on 2 cores):

    python benchmarks/int8_variants.py      # the 2,000 validation reviews of benchmarks/speed.py

README (Speed) quotes what it printed.
"""
from __future__ import annotations

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
from kdapp.inference import logits_from_ids
from kdapp.models import load_pair

sys.path.insert(0, str(Path(__file__).parent))
from speed import DATA, seed_split_rows  # noqa: E402  (the same validation reviews as speed.py)

TEACHER = "checkpoints/cpu-scale/teacher"
VARIANTS = (("int8", default_dynamic_qconfig, False), ("int8-headfp32", default_dynamic_qconfig, True),
            ("int8-perchannel", per_channel_dynamic_qconfig, False),
            ("int8-perchannel-headfp32", per_channel_dynamic_qconfig, True))


def quantized(model, qconfig, fp32_head: bool):
    """Dynamic int8 of every nn.Linear; with fp32_head the pooler and classifier stay in fp32."""
    model = copy.deepcopy(model)
    spec = {name: qconfig for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
            and not (fp32_head and (name.startswith("classifier") or "pooler" in name))}
    return quantize_dynamic(model, spec, dtype=torch.qint8)


def main() -> None:
    warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
    teacher, tokenizer = load_pair(TEACHER)
    teacher.eval()
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
    int8 = quantized(teacher, default_dynamic_qconfig, False)
    run(int8, "int8 full-last", cls_only=False)
    run(int8, "int8 no-cap", max_tokens=None)


if __name__ == "__main__":
    main()
