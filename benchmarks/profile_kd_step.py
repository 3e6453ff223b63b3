"""Where one KD step's time goes: teacher forward, student forward / backward, optimizer.

Four set-ups in float32: attention dropout 0.1 with PyTorch's dropout, 0.1 with kdapp's CPU dropout path
(kdapp/dropout.py), the same with teacher and student computing their last layer at [CLS] only (kdapp/cls_only.py;
both together are kdapp's training default), and attention dropout 0 (PyTorch's fused attention kernel; a recipe
change). With --bf16 (a CPU with native bf16), the student under bf16 autocast and the teacher in fp32, last layer at
[CLS] only: attention dropout 0.1 and 0, each with PyTorch's dropout and fused attention and with kdapp's CPU path
(its dropout masks, attention in bf16 matmuls).

From the repo root, once benchmarks/accuracy.py has made checkpoints/cpu-scale/teacher (and .../nokd, the student;
without it, a student made from the teacher's layers 0, 2 and 4: the same shapes, the same time):

    python benchmarks/profile_kd_step.py        # 16 reviews x 256 tokens, mean of 4 steps after 2 warm-up steps
    python benchmarks/profile_kd_step.py --bf16 --steps 10   # the bf16 set-ups, mean of 8 steps
    KDAPP_KEEP_FREED_MEMORY=0 python benchmarks/profile_kd_step.py --bf16 --steps 10   # glibc malloc's own settings
    python benchmarks/profile_kd_step.py --bf16 --path kdapp   # only kdapp's path (also: --path PyTorch)

The steps run as a training run does: AdamW fused (the Trainer's default), freed memory kept for reuse
(kdapp/memory.py) unless KDAPP_KEEP_FREED_MEMORY=0.

docs/speed.md quotes what it printed on the 2-core dev machine.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import kdapp  # noqa: F401  (OMP_WAIT_POLICY before torch)
import pandas as pd
import torch

from kdapp.distill import distillation_loss
from kdapp.encoding import encode
from kdapp.inference import pad_batch
from kdapp.cls_only import restore_last_layer, use_cls_only
from kdapp.dropout import use_fast_dropout
from kdapp.checkpoints import is_complete
from kdapp.memory import keep_freed_memory
from kdapp.models import load_pair, set_attention_dropout, student_from_teacher

TEACHER, STUDENT = "checkpoints/cpu-scale/teacher", "checkpoints/cpu-scale/nokd"
DATA = "../shared/data/imdb/train.parquet"
BATCH, STEPS, WARMUP = 16, 6, 2


FP32_SETUPS = ((0.1, "PyTorch", "full"), (0.1, "kdapp CPU", "full"), (0.1, "kdapp CPU", "[CLS] only"),
               (0.0, "PyTorch", "full"))
BF16_SETUPS = ((0.1, "PyTorch", "[CLS] only"), (0.1, "kdapp CPU", "[CLS] only"), (0.0, "PyTorch", "[CLS] only"),
               (0.0, "kdapp CPU", "[CLS] only"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bf16", action="store_true", help="the student under bf16 autocast (teacher in fp32)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps per set-up, the first {WARMUP} untimed")
    parser.add_argument("--path", choices=("all", "PyTorch", "kdapp"), default="all",
                        help="only the set-ups with this dropout / attention path")
    args = parser.parse_args()
    steps = max(args.steps, WARMUP + 1)
    teacher, tokenizer = load_pair(TEACHER)
    teacher.eval()
    rows = pd.read_parquet(DATA).sample(BATCH * steps, random_state=1)
    ids = encode(tokenizer, rows["text"].tolist(), 256, "head_tail", None)
    labels = torch.tensor(rows["label"].to_numpy())
    precision = "student bf16 autocast, teacher fp32" if args.bf16 else "fp32"
    with keep_freed_memory() as kept:
        print(f"{torch.get_num_threads()} threads, {precision}, batch {BATCH}, mean of {steps - WARMUP} steps (s); "
              f"freed memory kept for reuse: {kept}")
        for setup in BF16_SETUPS if args.bf16 else FP32_SETUPS:
            if args.path != "all" and not setup[1].startswith(args.path):
                continue
            time_setup(args, steps, teacher, tokenizer, ids, labels, *setup)


def time_setup(args, steps, teacher, tokenizer, ids, labels, p, path, last) -> None:
    """Print one set-up's mean time per step, part by part."""
    student = load_pair(STUDENT)[0] if is_complete(Path(STUDENT)) else student_from_teacher(teacher, 3)
    set_attention_dropout(student, p)
    if path == "kdapp CPU":
        use_fast_dropout(student)
    restore_last_layer(teacher)
    if last != "full":
        use_cls_only(student), use_cls_only(teacher)
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)
    spent = {"teacher forward": 0.0, "student forward": 0.0, "backward": 0.0, "optimizer": 0.0}
    for step in range(steps):
        rows_ = slice(step * BATCH, (step + 1) * BATCH)
        batch = pad_batch(ids[rows_], tokenizer.pad_token_id or 0, "cpu")
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            student_logits = student(**batch).logits
        loss, _, _ = distillation_loss(student_logits, teacher_logits, labels[rows_])
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad()
        t4 = time.perf_counter()
        if step >= WARMUP:
            for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                spent[key] += dt / (steps - WARMUP)
    print(f"  attention dropout {p}, {path} dropout, last layer {last}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in spent.items()), flush=True)


if __name__ == "__main__":
    main()
