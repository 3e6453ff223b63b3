"""Temperature scaling of a trained model on the seed's validation split: ECE and reliability before and after."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checkpoints import write_json
from .data import load_splits
from .evaluation import score
from .metrics import classification_metrics, fit_temperature
from .models import load_pair, resolve


def calibrate_checkpoint(model_name: str, data: str, max_eval_samples: int | None = None,
                         max_length: int | None = None, save: bool = True) -> dict:
    """Fit T (minimum NLL) on half of the validation rows, report metrics at T = 1 and at T on the other half.

    With save=True the result is written to <checkpoint>/calibration.json (the weights are not changed:
    temperature scaling divides the logits by T and never changes the argmax, so accuracy stays the same).
    """
    folder = Path(resolve(model_name))
    run_cfg = {}
    if (folder / "run_config.json").is_file():
        run_cfg = json.loads((folder / "run_config.json").read_text())
    model, tokenizer = load_pair(model_name)
    val = load_splits(data, max_eval_samples=max_eval_samples)["validation"]
    max_length = max_length or run_cfg.get("max_length", 512)
    _, logits = score(model, tokenizer, val["text"], val["label"], max_length,
                           truncation=run_cfg.get("truncation", "head"), head_tokens=run_cfg.get("head_tokens"))
    labels = np.asarray(val["label"])
    fit, held = np.arange(0, len(labels), 2), np.arange(1, len(labels), 2)  # fit and report on different rows
    temperature = fit_temperature(logits[fit], labels[fit])
    keys = ("accuracy", "nll", "ece", "reliability")
    before = classification_metrics(logits[held], labels[held])
    after = classification_metrics(logits[held], labels[held], temperature=temperature)
    result = {"model": model_name, "data": data, "n_fit": len(fit), "n_heldout": len(held),
              "temperature": temperature, "before": {k: before[k] for k in keys},
              "after": {k: after[k] for k in keys}}
    if save and folder.is_dir():
        write_json(folder / "calibration.json", result)
    return result
