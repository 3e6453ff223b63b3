"""Where a KD training step's time goes inside the Trainer: forward and loss, backward, the optimizer, the data and
the rest, for the cache arm of speed.py's logit-cache pair with the first layer frozen.

One distill_student run (1 epoch over 2,000 reviews of ../shared/data/imdb/train.parquet, the logit cache cold, the
teacher checkpoints/cpu-scale/teacher) with timers around DistillationTrainer.compute_loss, Trainer.training_step and
get_batch_samples, and a callback timing the optimizer step and each whole step. Nothing in kdapp changes; the timers
cost microseconds a step.

From the repo root, once benchmarks/accuracy.py has made checkpoints/cpu-scale/teacher:

    python benchmarks/trainer_step_parts.py                           # the student starts from the teacher's states
    python benchmarks/trainer_step_parts.py --share_frozen_layers false   # it computes its own first layer
"""
from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
import time
from pathlib import Path

import kdapp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)
from transformers import Trainer, TrainerCallback

import kdapp.distill as kdistill
from kdapp.cache import CACHE_DIR
from kdapp.config import RunConfig
from kdapp.train import distill_student

ROOT = Path(__file__).resolve().parents[1]
SECONDS: dict[str, float] = collections.defaultdict(float)


def timed(owner, name: str, key: str) -> None:
    """Add the time of every call of owner.name to SECONDS[key]."""
    function = getattr(owner, name)

    def run(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            SECONDS[key] += time.perf_counter() - start

    setattr(owner, name, run)


class StepClock(TrainerCallback):
    """Each whole step (step begin to step end) and its optimizer step."""

    def on_step_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.before_optimizer = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        SECONDS["optimizer"] += time.perf_counter() - self.before_optimizer

    def on_step_end(self, args, state, control, **kwargs):
        SECONDS["steps"] += time.perf_counter() - self.begin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--share_frozen_layers", default="true", choices=["true", "false"])
    p.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "imdb" / "train.parquet"))
    p.add_argument("--teacher", default=str(ROOT / "checkpoints" / "cpu-scale" / "teacher"))
    args = p.parse_args()
    timed(kdistill.DistillationTrainer, "compute_loss", "forward and loss")
    timed(Trainer, "training_step", "forward, loss and backward")
    timed(Trainer, "get_batch_samples", "data")
    shutil.rmtree(CACHE_DIR, ignore_errors=True)  # a cold cache, as speed.py's runs start
    with tempfile.TemporaryDirectory() as work:
        cfg = RunConfig(kind="distill", teacher=args.teacher, student="from-teacher", student_layers=3, data=args.data,
                        max_train_samples=2000, max_eval_samples=200, max_length=256, num_train_epochs=1,
                        warmup_steps=0.1, cache_teacher_logits=True, eval_strategy="no", save_steps=10**9,
                        logging_steps=50, output_dir=work, overwrite=True, report_to="none",
                        per_device_train_batch_size=16, learning_rate=1e-4, seed=42, attention_dropout=0.0,
                        hidden_dropout=0.0, mixed_precision="bf16", teacher_precision="fp32",
                        freeze_word_embeddings=True, freeze_layers=1,
                        share_frozen_layers=args.share_frozen_layers == "true")
        result = distill_student(cfg, callbacks=[StepClock()])
    total = result.metrics["train_runtime_s"]
    backward = SECONDS["forward, loss and backward"] - SECONDS["forward and loss"]
    parts = {"forward and loss": SECONDS["forward and loss"], "backward": backward,
             "optimizer": SECONDS["optimizer"], "data": SECONDS["data"],
             "the rest (scheduler, clipping, logging, callbacks)": total - SECONDS["forward, loss and backward"]
             - SECONDS["optimizer"] - SECONDS["data"]}
    print(f"\nshare_frozen_layers {args.share_frozen_layers}: the Trainer's epoch {total:.1f} s over "
          f"{result.metrics['global_step']} steps")
    for name, seconds in parts.items():
        print(f"  {name}: {seconds:.2f} s ({seconds / total:.0%})")


if __name__ == "__main__":
    main()
