"""Score a model on labelled reviews: classification and calibration metrics, size, and the time it took."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .checkpoints import folder_size_mb
from .data import load_eval_rows
from .inference import prepare_model, predict_logits
from .metrics import classification_metrics
from .models import count_parameters, load_pair, resolve


def score(model, tokenizer, texts: list[str], labels, max_length: int = 512, batch_size: int = 64,
          truncation: str = "head", head_tokens: int | None = None, progress=None,
          windows: bool = False) -> tuple[dict, np.ndarray]:
    """(metrics, logits) for `texts` through the fast inference path (windows: each review read whole)."""
    start = time.perf_counter()
    logits = predict_logits(model, tokenizer, texts, max_length, batch_size, truncation, head_tokens, progress,
                            windows=windows)
    seconds = time.perf_counter() - start
    metrics = classification_metrics(logits, np.asarray(labels))
    metrics.update(eval_seconds=round(seconds, 3), samples_per_second=round(len(texts) / max(seconds, 1e-9), 2))
    return metrics, logits


def evaluate_checkpoint(model_name: str, data: str, max_eval_samples: int | None = None, max_length: int | None = None,
                        batch_size: int = 64, precision: str = "fp32", device: str | None = None,
                        progress=None, windows: bool = False) -> dict:
    """`python -m kdapp evaluate`: load a checkpoint, score every row of `data` (or its test split), report all.

    The reviews are read as the model was trained to read them (its run's max_length, truncation and head tokens);
    windows: read whole instead, as max_length windows whose logits are averaged."""
    model, tokenizer = load_pair(model_name)
    rows = load_eval_rows(data, max_eval_samples)
    run_cfg = saved_run_config(model_name)
    max_length = max_length or run_cfg.get("max_length", 512)
    params = count_parameters(model)
    model = prepare_model(model, precision, device)
    metrics, _ = score(model, tokenizer, rows["text"], rows["label"], max_length, batch_size,
                       run_cfg.get("truncation", "head"), run_cfg.get("head_tokens"), progress, windows)
    folder = Path(resolve(model_name))
    return {"model": model_name, "data": data, "precision": precision, "device": str(device or "auto"),
            "max_length": max_length, "reading": "windows" if windows else run_cfg.get("truncation", "head"),
            "params": params,
            "size_mb": folder_size_mb(folder) if folder.is_dir() and precision == "fp32" else quantized_size_mb(model),
            **({"int8": model.kdapp_int8} if hasattr(model, "kdapp_int8") else {}), **metrics}


def saved_run_config(model_name: str) -> dict:
    """The checkpoint's run_config.json ({} for a hub model or a folder kdapp did not train)."""
    import json

    path = Path(resolve(model_name)) / "run_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def quantized_size_mb(model) -> float:
    """Serialized size of a (possibly quantized) model's state dict, measured by writing it to memory."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return round(buf.tell() / 1e6, 2)
