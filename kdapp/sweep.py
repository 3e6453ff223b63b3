"""alpha/T sweep: one distillation run per grid point, the teacher's logits computed once and shared.

Results go to <sweep_dir>/sweep.json after every point, so an interrupted sweep keeps what it finished.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

from .checkpoints import write_json
from .config import CHECKPOINTS_DIR, RunConfig
from .train import distill_student

WEIGHT_FILES = ("model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


# what only a KD run has: a no-KD point (alpha = 1, no teacher) of a sweep or an app job drops these
NO_KD_OPTIONS = dict(transfer_data=None, transfer_samples=None, transfer_windows=0, augment_windows=0, augment_masked=0,
                     hidden_loss="none", teacher_max_length=None, teacher_precision="auto", mixup_alpha=0.0,
                     online_mask_prob=0.0, fold_teachers=None, cross_fit_views=False, augment_labels=False,
                     transfer_teachers=None)


def grid(alphas, temperatures) -> list[tuple[float, float]]:
    """(alpha, T) points; alpha = 1 ignores T, so it appears once."""
    points = [(float(a), float(t)) for a, t in itertools.product(alphas, temperatures) if float(a) < 1.0]
    if any(float(a) == 1.0 for a in alphas):
        points.append((1.0, float(temperatures[0])))
    return points


def run_sweep(base: RunConfig, alphas, temperatures, sweep_dir: Path | str | None = None,
              keep_checkpoints: bool = False, callbacks=None, progress=None) -> list[dict]:
    """Distil once per (alpha, T); returns one row per point: alpha, temperature, accuracy, f1_weighted, ece, ..."""
    sweep_dir = Path(sweep_dir or CHECKPOINTS_DIR / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    results_path = sweep_dir / "sweep.json"
    rows = json.loads(results_path.read_text())["rows"] if results_path.is_file() else []
    done = {(r["alpha"], r["temperature"]) for r in rows}
    points = grid(alphas, temperatures)
    for i, (alpha, temperature) in enumerate(points):
        if progress:
            progress(i / len(points), f"alpha={alpha} T={temperature} ({i + 1}/{len(points)})")
        if (alpha, temperature) in done:
            continue
        name = f"a{alpha:g}-T{temperature:g}"
        kd_only = NO_KD_OPTIONS if alpha == 1.0 else {}  # the no-KD point: labels only, same init, epochs and LR
        cfg = dataclasses.replace(base, kind="distill", alpha=alpha, temperature=temperature, run_name=name,
                                  output_dir=str(sweep_dir / name), overwrite=True,
                                  cache_teacher_logits=base.hidden_loss == "none", **kd_only)
        result = distill_student(cfg, callbacks=callbacks)
        if result.status != "done":
            break
        val = result.metrics["validation"]
        rows.append({"alpha": alpha, "temperature": temperature, "accuracy": val["accuracy"],
                     "f1_weighted": val["f1_weighted"], "ece": val["ece"], "nll": val["nll"],
                     "train_runtime_s": result.metrics["train_runtime_s"], "run": str(result.output_dir)})
        if not keep_checkpoints:  # keep metrics.json and run_config.json, drop the weights
            for f in WEIGHT_FILES:
                (result.output_dir / f).unlink(missing_ok=True)
        write_json(results_path, {"base_config": base.to_dict(), "rows": rows})
    if progress:
        progress(1.0, "done")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| alpha | T | accuracy | weighted F1 | ECE | train s |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["alpha"], r["temperature"])):
        lines.append(f"| {r['alpha']:g} | {r['temperature']:g} | {100 * r['accuracy']:.2f} % | "
                     f"{100 * r['f1_weighted']:.2f} | {r['ece']:.4f} | {r['train_runtime_s']:.0f} |")
    return "\n".join(lines)
