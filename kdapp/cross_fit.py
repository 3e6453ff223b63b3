"""Cross-fitted soft targets: the labelled reviews labelled by teachers that did not train on them.

A teacher fine-tuned on a few thousand reviews memorises them: on its own training reviews it is right almost always
and sure of it (README: Accuracy), so its soft targets there say little beyond the labels, and KD on the labelled
reviews alone buys little. Cross-fitting splits the labelled rows into K folds, fine-tunes K teachers with the
teacher's recipe, each with one fold held out (`--holdout_fold k/K`), and lets each label the fold it did not see
(`--fold_teachers`): out-of-fold soft targets, as stacking and cross-fitting estimators use out-of-fold predictions.
Transfer rows and on-the-fly views keep the main teacher's targets; the windows and masked copies of each labelled
review (--augment_windows, --augment_masked) keep them too unless --cross_fit_views, which hands each to the fold
teacher that held its review out (the main teacher trained on the review they come from).

    python -m kdapp teacher ... --holdout_fold 0/4 --output_dir checkpoints/teacher-fold0   # and 1/4, 2/4, 3/4
    python -m kdapp distill --teacher checkpoints/teacher --cache_teacher_logits true \\
        --fold_teachers checkpoints/teacher-fold0,checkpoints/teacher-fold1,checkpoints/teacher-fold2,...

The transfer rows and their windows can have an ensemble's soft targets instead (--transfer_teachers: the mean
logits of several teachers; the fold teachers suit, as none of them trained on a transfer review).

Fold k holds rows i with i mod K = k of the seed-shuffled training split (after --max_train_samples): the same rows
for every seed, so one set of fold teachers serves students of any seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .cache import teacher_logits
from .checkpoints import is_complete, load_run_info
from .config import RunConfig, parse_fold


def fold_rows(n: int, k: int, folds: int) -> list[int]:
    """The rows of fold k of `folds` among n training rows."""
    return list(range(k, n, folds))


def training_rows_outside_fold(n: int, k: int, folds: int) -> list[int]:
    """The rows a teacher holding out fold k of `folds` trains on."""
    if n < folds:
        raise ValueError(f"holdout_fold {k}/{folds} needs at least {folds} training rows, got {n}")
    return [i for i in range(n) if i % folds != k]


def _same_source(a: str | None, b: str | None) -> bool:
    if a == b:
        return True
    pa, pb = Path(str(a)).expanduser(), Path(str(b)).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def check_fold_teachers(cfg: RunConfig, n_labelled: int) -> tuple[list[tuple[str, int]], int]:
    """([(folder, k)], K) for cfg.fold_teachers, after checking that they are complete teacher runs holding out
    folds 0..K-1 once each, of the same labelled rows as this student (data, max_train_samples)."""
    folds, seen = None, {}
    for folder in cfg.fold_teacher_list():
        info = load_run_info(Path(folder).expanduser())
        rc = info.run_config
        if not is_complete(info.path) or rc.get("kind") != "teacher":
            raise ValueError(f"fold teacher {folder!r} is not a complete teacher run folder")
        if not rc.get("holdout_fold"):
            raise ValueError(f"fold teacher {folder!r} was trained on every labelled row: train fold teachers with "
                             "--holdout_fold k/K")
        k, n_folds = parse_fold(rc["holdout_fold"])
        if folds not in (None, n_folds):
            raise ValueError(f"fold teachers of different K: {folder!r} holds out {rc['holdout_fold']}, the others "
                             f"one fold of {folds}")
        folds = n_folds
        if k in seen:
            raise ValueError(f"fold {k}/{n_folds} is held out by both {seen[k]!r} and {folder!r}")
        if not _same_source(rc.get("data"), cfg.data) or rc.get("max_train_samples") != cfg.max_train_samples:
            raise ValueError(f"fold teacher {folder!r} was trained on other rows (data {rc.get('data')!r}, "
                             f"max_train_samples {rc.get('max_train_samples')}) than this student (data "
                             f"{cfg.data!r}, max_train_samples {cfg.max_train_samples}): folds must split the same "
                             "labelled rows")
        held = (rc.get("meta") or {}).get("held_out_rows")
        if held is not None and held != len(fold_rows(n_labelled, k, n_folds)):
            raise ValueError(f"fold teacher {folder!r} held out {held} rows, but fold {k}/{n_folds} of this "
                             f"student's {n_labelled} labelled rows has {len(fold_rows(n_labelled, k, n_folds))}")
        seen[k] = folder
    missing = sorted(set(range(folds)) - seen.keys())
    if missing:
        raise ValueError(f"fold teachers for fold(s) {', '.join(f'{k}/{folds}' for k in missing)} are missing: "
                         f"give one teacher per fold, {folds} in all")
    return [(seen[k], k) for k in sorted(seen)], folds


def cross_fit_logits(cache: torch.Tensor, ids: list[list[int]], labels: list[int], pad_id: int,
                     teachers: list[tuple[torch.nn.Module, int]], folds: int, batch_size: int = 64,
                     views: tuple[int, list[list[int]], list[int]] | None = None) -> tuple[torch.Tensor, dict]:
    """A copy of the logit cache whose first len(ids) rows (the labelled reviews) come from the teacher holding out
    each row's fold; the rest unchanged. Also how often the fold teachers and the main teacher agree with the labels
    on those rows (held-out accuracy against training-set accuracy).

    views: (first cache row, their ids, the labelled review each comes from): rows from there on relabelled too,
    each by the teacher holding out its review's fold (scored against that review's label)."""
    out = cache.clone()
    n = len(ids)
    start, view_ids, owners = views or (n, [], [])
    rows = list(range(n)) + [start + j for j in range(len(view_ids))]
    row_ids, owners = list(ids) + list(view_ids), list(range(n)) + list(owners)
    for model, k in teachers:
        mine = [j for j, owner in enumerate(owners) if owner % folds == k]  # fold_rows(n, k, folds) and their views
        logits, _ = teacher_logits(model, [row_ids[j] for j in mine], pad_id, batch_size)
        out[[rows[j] for j in mine]] = logits
    labels = np.asarray(labels)

    def accuracy(logits: torch.Tensor, truth: np.ndarray) -> float:
        return round(float((logits.argmax(-1).numpy() == truth).mean()), 4)

    info = {"folds": folds, "rows": n, "fold_teacher_accuracy": accuracy(out[:n], labels),
            "teacher_accuracy": accuracy(cache[:n], labels)}
    if view_ids:
        view_rows, view_labels = rows[n:], labels[owners[n:]]
        info |= {"view_rows": len(view_ids), "view_fold_teacher_accuracy": accuracy(out[view_rows], view_labels),
                 "view_teacher_accuracy": accuracy(cache[view_rows], view_labels)}
    return out, info


def ensemble_logits(cache: torch.Tensor, rows: list[int], ids: list[list[int]], pad_id: int,
                    teachers: list[torch.nn.Module], batch_size: int = 64) -> tuple[torch.Tensor, dict]:
    """A copy of the logit cache whose `rows` (ids: one per row) hold the mean logits of `teachers`, the rest
    unchanged; also how often the ensemble picks the class the cache's teacher picked on those rows."""
    out = cache.clone()
    if not rows:
        return out, {"teachers": len(teachers), "rows": 0, "agreement_with_teacher": None}
    mean = torch.stack([teacher_logits(model, ids, pad_id, batch_size)[0] for model in teachers]).mean(0)
    out[rows] = mean
    agreement = float((mean.argmax(-1) == cache[rows].argmax(-1)).float().mean())
    return out, {"teachers": len(teachers), "rows": len(rows), "agreement_with_teacher": round(agreement, 4)}
