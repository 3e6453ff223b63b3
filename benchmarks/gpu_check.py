"""CUDA path check on a GPU box: bert-base -> distilbert-base from their configs (random weights, no download).

Trains a teacher and distils a student (bf16 mixed precision, teacher on the GPU in half precision, logit cache on
and off) on a few thousand reviews, and prints the measured training samples/s, from which the wall time of the
full-IMDb recipe is derived. Accuracy is meaningless here (random init, one short epoch); speed is the point.

    python benchmarks/gpu_check.py --data reviews.parquet --tokenizer TOKENIZER_DIR --out OUT_DIR
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import kdapp  # noqa: F401
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kdapp.benchmark import ARCHS
from kdapp.config import RunConfig
from kdapp.train import distill_student, train_teacher

FULL_TRAIN_ROWS, FULL_UNSUP_ROWS = 22_500, 50_000  # IMDb train after the 90/10 split; the unsupervised split


def build(arch: str, tokenizer_dir: str, out: Path) -> str:
    cfg = ARCHS[arch]()
    cfg.num_labels = 2
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(cfg).save_pretrained(out / arch)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out / arch)
    return str(out / arch)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--max_length", type=int, default=512)
    args = p.parse_args()
    out = Path(args.out)
    work = Path("/tmp/gpu_check")
    teacher = build("bert-base-uncased", args.tokenizer, work)
    student = build("distilbert-base-uncased", args.tokenizer, work)
    common = dict(data=args.data, max_train_samples=args.rows, max_eval_samples=500, max_length=args.max_length,
                  per_device_train_batch_size=32, per_device_eval_batch_size=128, learning_rate=2e-5,
                  warmup_steps=0.1, eval_strategy="no", logging_steps=20, truncation="head_tail")
    res = {"gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "rows": args.rows, "max_length": args.max_length}

    t = time.time()
    r = train_teacher(RunConfig(model=teacher, output_dir=str(work / "teacher"), **common))
    res["teacher"] = {"train_samples_per_second": r.metrics["train_samples_per_second"],
                      "wall_s": round(time.time() - t, 1), "eval_samples_per_second": r.metrics["validation"]["samples_per_second"]}
    for name, cache in (("student_onthefly", False), ("student_cached", True)):
        t = time.time()
        r = distill_student(RunConfig(kind="distill", teacher=str(work / "teacher"), student=student, alpha=0.5,
                                      temperature=2.0, num_train_epochs=2.0, cache_teacher_logits=cache,
                                      output_dir=str(work / name), **{**common, "learning_rate": 5e-5}))
        meta = json.loads((work / name / "run_config.json").read_text())["meta"]
        res[name] = {"train_samples_per_second": r.metrics["train_samples_per_second"], "wall_s": round(time.time() - t, 1),
                     "teacher_logits_cached": meta["teacher_logits_cached"], "device": meta["device"],
                     "mixed_precision": "bf16" if torch.cuda.is_bf16_supported() else "fp16"}
    t_sps = res["teacher"]["train_samples_per_second"]
    s_sps = res["student_cached"]["train_samples_per_second"]
    inf_sps = res["teacher"]["eval_samples_per_second"]
    res["full_imdb_estimate_min"] = {
        "teacher_3_epochs": round(3 * FULL_TRAIN_ROWS / t_sps / 60, 1),
        "teacher_logits_once_with_unsup": round((FULL_TRAIN_ROWS + FULL_UNSUP_ROWS) / inf_sps / 60, 1),
        "student_3_epochs_with_unsup_cached": round(3 * (FULL_TRAIN_ROWS + FULL_UNSUP_ROWS) / s_sps / 60, 1),
        "scoring_25000_test_rows_teacher": round(25_000 / inf_sps / 60, 1),
    }
    print(json.dumps(res, indent=2))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
