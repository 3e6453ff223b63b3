"""Runs on disk: checkpoints/<run>/{model.safetensors, config.json, tokenizer files, run_config.json, metrics.json}.

A run is built in <run>.incomplete/ (Trainer checkpoints for --resume live there too) and renamed into place with
os.replace only when every file is written, so a crash or SIGKILL never leaves a half-written run that looks whole.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .quantize import save_calibration


INCOMPLETE = ".incomplete"
RUN_FILES = ("config.json", "model.safetensors", "run_config.json", "metrics.json")


@dataclass
class RunInfo:
    path: Path
    run_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> str:
        """teacher, kd (distilled student) or nokd (same student, alpha = 1)."""
        cfg = self.run_config
        if cfg.get("kind") != "distill":
            return "teacher"
        return "nokd" if float(cfg.get("alpha", 0.5)) == 1.0 else "kd"


def work_dir(output_dir: Path) -> Path:
    """Where a run is built before it is renamed into place."""
    return output_dir.with_name(output_dir.name + INCOMPLETE)


def is_complete(path: Path) -> bool:
    return path.is_dir() and not path.name.endswith(INCOMPLETE) and all((path / f).is_file() for f in RUN_FILES) \
        and any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt"))


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def save_run(model, tokenizer, output_dir: Path, run_config: dict, metrics: dict, overwrite: bool = False,
             arrays: dict | None = None, int8_maxima: dict | None = None) -> Path:
    """Write a whole run to <output_dir>.incomplete/final, then rename it to output_dir in one step.

    `arrays` ({name: numpy array}) are saved as <name>.npy, e.g. validation_logits (row order of the seed split);
    `int8_maxima` as the int8 calibration (kdapp/quantize.py).
    """
    output_dir = Path(output_dir)
    staging = work_dir(output_dir) / "final"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    metrics = dict(metrics, size_mb=folder_size_mb(staging))
    for name, array in (arrays or {}).items():
        np.save(staging / f"{name}.npy", array, allow_pickle=False)
    if int8_maxima:
        save_calibration(staging, int8_maxima)
    write_json(staging / "run_config.json", run_config)
    write_json(staging / "metrics.json", metrics)
    _fsync_tree(staging)
    publish(staging, output_dir, overwrite)
    shutil.rmtree(work_dir(output_dir), ignore_errors=True)
    return output_dir


def publish(staging: Path, output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists():
        if not overwrite:
            raise FileExistsError(f"{output_dir} already exists: choose another --run_name or pass --overwrite")
        old = output_dir.with_name(f".{output_dir.name}.old-{time.time_ns()}")
        os.replace(output_dir, old)
        os.replace(staging, output_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, output_dir)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def folder_size_mb(path: Path) -> float:
    """Size of the weight files (what a user downloads to serve the model), in MB."""
    files = [f for f in Path(path).glob("*.safetensors")] or [f for f in Path(path).iterdir() if f.is_file()]
    return round(sum(f.stat().st_size for f in files) / 1e6, 2)


def load_run_info(path: Path) -> RunInfo:
    path = Path(path)

    def read(name):
        try:
            return json.loads((path / name).read_text())
        except (OSError, ValueError):
            return {}

    return RunInfo(path, read("run_config.json"), read("metrics.json"))


def list_runs(root: Path | str | None = None) -> list[RunInfo]:
    """Every complete run under root (and one folder down, e.g. checkpoints/cpu-scale/<run>), newest first.

    Half-written (.incomplete) and hidden folders are skipped.
    """
    from . import config

    root = Path(root if root is not None else config.CHECKPOINTS_DIR)
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        if p.name.startswith(".") or p.name.endswith(INCOMPLETE) or not p.is_dir():
            continue
        if is_complete(p):
            runs.append(p)
        else:
            runs += [q for q in p.iterdir() if not q.name.startswith(".") and is_complete(q)]
    runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [load_run_info(p) for p in runs]


def list_incomplete(root: Path | str | None = None) -> list[Path]:
    """Interrupted runs that hold a Trainer checkpoint to --resume from."""
    from . import config

    root = Path(root if root is not None else config.CHECKPOINTS_DIR)
    return sorted(p for p in root.glob(f"*{INCOMPLETE}") if last_trainer_checkpoint(p) is not None) if root.is_dir() else []


def last_trainer_checkpoint(work: Path) -> Path | None:
    ckpts = [p for p in (Path(work) / "trainer").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None
