"""Where one KD step's time goes: teacher forward, student forward / backward, optimizer.

Four set-ups: attention dropout 0.1 with PyTorch's dropout, 0.1 with kdapp's CPU dropout path (kdapp/dropout.py),
the same with teacher and student computing their last layer at [CLS] only (kdapp/cls_only.py; both together are
kdapp's training default), and attention dropout 0 (PyTorch's fused attention kernel; a recipe change).

From the repo root, once benchmarks/accuracy.py has made checkpoints/cpu-scale/teacher and .../nokd (the student):

    python benchmarks/profile_kd_step.py        # 16 reviews x 256 tokens, mean of 4 steps after 2 warm-up steps

README (Speed) quotes what it printed on the 2-core dev machine.
"""
from __future__ import annotations

import time

import kdapp  # noqa: F401  (OMP_WAIT_POLICY before torch)
import pandas as pd
import torch

from kdapp.distill import distillation_loss
from kdapp.encoding import encode
from kdapp.inference import pad_batch
from kdapp.cls_only import restore_last_layer, use_cls_only
from kdapp.dropout import use_fast_dropout
from kdapp.models import load_pair, set_attention_dropout

TEACHER, STUDENT = "checkpoints/cpu-scale/teacher", "checkpoints/cpu-scale/nokd"
DATA = "../shared/data/imdb/train.parquet"
BATCH, STEPS, WARMUP = 16, 6, 2


def main() -> None:
    teacher, tokenizer = load_pair(TEACHER)
    teacher.eval()
    rows = pd.read_parquet(DATA).sample(BATCH * STEPS, random_state=1)
    ids = encode(tokenizer, rows["text"].tolist(), 256, "head_tail", None)
    labels = torch.tensor(rows["label"].to_numpy())
    print(f"{torch.get_num_threads()} threads, batch {BATCH}, mean of {STEPS - WARMUP} steps (s):")
    for p, path, last in ((0.1, "PyTorch", "full"), (0.1, "kdapp CPU", "full"), (0.1, "kdapp CPU", "[CLS] only"),
                          (0.0, "PyTorch", "full")):
        student, _ = load_pair(STUDENT)
        set_attention_dropout(student, p)
        if path == "kdapp CPU":
            use_fast_dropout(student)
        restore_last_layer(teacher)
        if last != "full":
            use_cls_only(student), use_cls_only(teacher)
        student.train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)
        spent = {"teacher forward": 0.0, "student forward": 0.0, "backward": 0.0, "optimizer": 0.0}
        for step in range(STEPS):
            rows_ = slice(step * BATCH, (step + 1) * BATCH)
            batch = pad_batch(ids[rows_], tokenizer.pad_token_id or 0, "cpu")
            t0 = time.perf_counter()
            with torch.no_grad():
                teacher_logits = teacher(**batch).logits
            t1 = time.perf_counter()
            loss, _, _ = distillation_loss(student(**batch).logits, teacher_logits, labels[rows_])
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad()
            t4 = time.perf_counter()
            if step >= WARMUP:
                for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                    spent[key] += dt / (STEPS - WARMUP)
        print(f"  attention dropout {p}, {path} dropout, last layer {last}: " + ", ".join(f"{k} {v:.2f}" for k, v in spent.items()), flush=True)


if __name__ == "__main__":
    main()
