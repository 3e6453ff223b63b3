"""train_teacher(cfg) and distill_student(cfg): the whole run, from data to a checkpoint folder with its metrics.

The CLI, the app and the benchmark scripts all call these two functions.
"""
from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from datasets import Dataset, concatenate_datasets
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.trainer_utils import TrainOutput

from . import memory, tracking
from .cache import teacher_fingerprint, teacher_logits
from .checkpoints import last_trainer_checkpoint, save_run, work_dir, write_json
from .cls_only import restore_last_layer, use_cls_only
from .config import FROM_TEACHER, RunConfig, parse_fold
from .cross_fit import check_fold_teachers, cross_fit_logits, ensemble_logits, training_rows_outside_fold
from .data import load_splits, load_transfer_texts
from .distill import IGNORE, DistillationTrainer
from .dropout import restore_dropout, use_fast_dropout
from .encoding import encode, masked_views, tokenize_dataset, window_views
from .evaluation import score
from .inference import native_bf16, prepare_model
from .metrics import trainer_metrics
from .models import (check_same_tokenizer, count_parameters, encoder_layers, load_model, load_pair, load_tokenizer,
                     set_attention_dropout, set_hidden_dropout, student_from_teacher)
from .quantize import CALIBRATION_ROWS, activation_maxima, calibration_tag
from .shared_prefix import fill_states, fits_in_memory, shared_layers

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run produced: status 'done' (output_dir holds the run) or 'cancelled' (nothing published)."""
    status: str
    output_dir: Path | None
    metrics: dict = field(default_factory=dict)
    message: str = ""
    log_history: list = field(default_factory=list)


# ---------------------------------------------------------------- public entry points
@memory.keep_freed_memory()  # large tensors reuse freed memory for the whole run (kdapp/memory.py)
def train_teacher(cfg: RunConfig, callbacks: list[TrainerCallback] | None = None) -> RunResult:
    """Fine-tune cfg.model on the seed's split with plain cross-entropy (the Hugging Face Trainer)."""
    if cfg.kind != "teacher":
        raise ValueError(f"train_teacher needs kind='teacher', got {cfg.kind!r}")
    amp = mixed_precision_dtype(cfg)  # before any work: fp16 on a CPU is refused
    out, resume_from = _prepare_output(cfg)
    _set_threads(cfg.num_threads)
    splits = load_splits(cfg.data, cfg.test_data, cfg.max_train_samples, cfg.max_eval_samples)  # data errors first
    held_out = 0
    if cfg.holdout_fold:  # cross-fitting: leave fold k out, for this teacher to label it (kdapp/cross_fit.py)
        kept = training_rows_outside_fold(len(splits["train"]), *parse_fold(cfg.holdout_fold))
        held_out = len(splits["train"]) - len(kept)
        splits["train"] = splits["train"].select(kept)
    transformers.set_seed(cfg.seed)  # the fresh classifier head is initialised while loading
    model, tokenizer = load_pair(cfg.model)
    if cfg.attention_dropout is not None:
        set_attention_dropout(model, cfg.attention_dropout)
    if cfg.hidden_dropout is not None:
        set_hidden_dropout(model, cfg.hidden_dropout)
    dropout_path = _dropout_path(cfg, model, amp)
    last_layer = _last_layer(cfg, model)
    frozen = _freeze(cfg, model)
    max_length = _check_max_length(cfg, model)
    train_ds, eval_ds = (_tokenize(cfg, splits[s], tokenizer, max_length) for s in ("train", "validation"))
    # windows and masked copies of the labelled reviews, each with its review's label (as for a no-KD student)
    views, owner = augment_views(cfg, tokenizer, splits["train"]["text"], train_ds["input_ids"], max_length)
    review_labels = list(splits["train"]["label"])
    train_ds = _append_views(train_ds, views, [review_labels[i] for i in owner])
    args = _training_args(cfg, out, remove_unused_columns=True, amp=amp)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                      compute_metrics=trainer_metrics, callbacks=callbacks)
    # the classifier's loss is a batch mean that ignores num_items_in_batch; left True, transformers 5.24 multiplies
    # it by the number of processes under torchrun (2x loss and gradients) and skips the gradient-accumulation division
    trainer.model_accepts_loss_kwargs = False
    meta = {"train_rows": len(train_ds) - len(views), "augment_rows": len(views), "held_out_rows": held_out,
            "max_length_effective": max_length,
            "dropout_path": dropout_path, "last_layer": last_layer, "mixed_precision_effective": _amp_name(amp),
            "frozen_parameters": frozen}
    return _train_and_save(cfg, trainer, tokenizer, splits, out, resume_from, meta)


@memory.keep_freed_memory()
def distill_student(cfg: RunConfig, callbacks: list[TrainerCallback] | None = None) -> RunResult:
    """Train a student with alpha * CE + (1 - alpha) * T^2 * KL against cfg.teacher (alpha = 1: no-KD student)."""
    if cfg.kind != "distill":
        raise ValueError(f"distill_student needs kind='distill', got {cfg.kind!r}")
    amp = mixed_precision_dtype(cfg)
    out, resume_from = _prepare_output(cfg)
    _set_threads(cfg.num_threads)
    splits = load_splits(cfg.data, cfg.test_data, cfg.max_train_samples, cfg.max_eval_samples)  # data errors first
    transformers.set_seed(cfg.seed)
    teacher, teacher_tok = load_pair(cfg.teacher)
    student, tokenizer, layer_map = _make_student(cfg, teacher, teacher_tok)
    check_same_tokenizer(teacher_tok, tokenizer)
    if cfg.attention_dropout is not None:
        set_attention_dropout(student, cfg.attention_dropout)
    if cfg.hidden_dropout is not None:
        set_hidden_dropout(student, cfg.hidden_dropout)
    dropout_path = _dropout_path(cfg, student, amp)
    max_length = _check_max_length(cfg, student, teacher)
    teacher_length = _check_teacher_length(cfg, teacher)
    if cfg.hidden_loss != "none" and teacher.config.hidden_size != student.config.hidden_size:
        raise ValueError(f"hidden_loss needs equal widths; teacher hidden_size {teacher.config.hidden_size} != "
                         f"student {student.config.hidden_size}. Use --hidden_loss none or a student from the teacher.")
    last_layer = _last_layer(cfg, student)
    frozen = _freeze(cfg, student)
    folds = check_fold_teachers(cfg, len(splits["train"])) if cfg.fold_teachers else None  # before tokenizing

    train_rows = splits["train"]
    transfer_rows = 0
    if cfg.transfer_data:  # unlabelled reviews: KD term only (label -100)
        texts = load_transfer_texts(cfg.transfer_data, cfg.data, cfg.max_train_samples, cfg.transfer_samples)
        extra = Dataset.from_dict({"text": texts, "label": [IGNORE] * len(texts)})
        train_rows = concatenate_datasets([train_rows.cast(extra.features), extra])
        transfer_rows = len(texts)
    train_ds = _tokenize(cfg, train_rows, tokenizer, max_length)
    views, owner = augment_views(cfg, tokenizer, splits["train"]["text"],
                                  train_ds["input_ids"][: len(splits["train"])], max_length)
    augment_rows = len(views)
    # KD-only rows; a no-KD student (alpha = 1, no teacher) gives a window or masked copy its review's label
    # instead, the control that separates what the augmentation buys from what the teacher's soft targets buy;
    # --augment_labels gives a KD student's views both
    labels = [IGNORE] * len(views)
    if cfg.alpha == 1.0 or cfg.augment_labels:
        review_labels = list(splits["train"]["label"])
        labels = [review_labels[i] for i in owner]
    transfer_views = []
    if cfg.transfer_windows:  # further windows of the long transfer reviews (alpha < 1: the teacher labels them)
        transfer_views, _ = window_views(tokenizer, texts, max_length, cfg.transfer_windows)
        views, labels = views + transfer_views, labels + [IGNORE] * len(transfer_views)
    train_ds = _append_views(train_ds, views, labels)
    eval_ds = _tokenize(cfg, splits["validation"], tokenizer, max_length)

    use_cuda = torch.cuda.is_available()
    fingerprint, teacher_params = None, count_parameters(teacher)
    if cfg.alpha < 1.0 and cfg.teacher_precision == "int8":  # CPU: dynamic int8 (README: Accuracy)
        if use_cuda:
            raise ValueError("teacher_precision int8 is for CPU runs; on a GPU the teacher runs in half precision "
                             "(teacher_precision auto)")
        # the cache never mixes int8 and fp32 logits, nor int8 with other calibration
        fingerprint = (f"{teacher_fingerprint(teacher)}-int8-perchannel"
                       f"{calibration_tag(getattr(teacher, 'kdapp_int8_maxima', None))}")
        teacher = prepare_model(teacher, "int8", "cpu")
    elif cfg.alpha < 1.0 and cfg.teacher_precision == "auto" and amp is not None and not use_cuda:
        # CPU bf16 training: the teacher in bf16 too, as a GPU runs it in half precision (its cache file is its own:
        # the fingerprint hashes the bf16 weights)
        teacher = prepare_model(teacher, "bf16", "cpu")
    # GPU: the teacher in the run's half precision (fp16 when the student trains in fp32), from the cache pass on,
    # so cached and on-the-fly soft targets come from the same teacher
    teacher_dtype = (amp or torch.float16) if use_cuda and cfg.teacher_precision == "auto" else None
    if teacher_dtype is not None and cfg.alpha < 1.0:
        teacher = teacher.to(dtype=teacher_dtype)
    if cfg.last_layer_cls_only():  # the teacher's logits too (a copy when it went int8 or bf16 above)
        use_cls_only(teacher)
    # the Trainer's arguments first: under torchrun they open the process group (and pick each process's GPU), so
    # the cache pass below is shared out between the processes and each one's teacher is on its own device
    args = _training_args(cfg, out, remove_unused_columns=False, amp=amp)
    shared = _shared_layers(cfg, teacher, student)
    cache, cache_hit, cross_fit, transfer_ensemble, states, bottom_rows = None, False, None, None, None, None
    if cfg.cache_teacher_logits and cfg.alpha < 1.0:
        teacher.to("cuda" if use_cuda else "cpu")
        teacher_ids = train_ds["input_ids"]
        if teacher_length != max_length:  # the teacher reads longer inputs of the same reviews; views stay as made
            teacher_ids = (list(_tokenize(cfg, train_rows, tokenizer, teacher_length)["input_ids"])
                           + list(teacher_ids[len(train_rows):]))
        # the cache pass keeps the shared layers' states too, where the student reads the same inputs and they fit
        elif shared and fits_in_memory(sum(map(len, teacher_ids)), student.config.hidden_size):
            states = [None] * len(teacher_ids)
        elif shared:
            log.info("shared layers: their states for %d rows would take over a quarter of free memory; the student "
                     "computes its own first %d layers in this run", len(teacher_ids), shared)
        cache, cache_hit = teacher_logits(teacher, teacher_ids, tokenizer.pad_token_id or 0,
                                          cfg.per_device_eval_batch_size, fingerprint=fingerprint,
                                          hidden_layer=shared, states=states)
        if states is not None:  # rows whose logits came from the file: the teacher's shared layers alone
            bottom_rows = fill_states(teacher, teacher_ids, tokenizer.pad_token_id or 0, shared, states,
                                      cfg.per_device_eval_batch_size)
        if folds:  # the labelled rows' soft targets (and their views') from the teachers that held them out
            first_view = len(train_rows)  # after the labelled and transfer rows
            views_of = (first_view, teacher_ids[first_view:first_view + augment_rows], owner) \
                if cfg.cross_fit_views else None
            cache, cross_fit = _cross_fit(cfg, folds, cache, teacher_ids[:len(splits["train"])],
                                          splits["train"]["label"], tokenizer, views_of)
        if cfg.transfer_teachers:  # the transfer rows and their windows labelled by an ensemble
            rows = [*range(len(splits["train"]), len(train_rows)),
                    *range(len(train_ds) - len(transfer_views), len(train_ds))]
            cache, transfer_ensemble = ensemble_logits(
                cache, rows, [teacher_ids[i] for i in rows], tokenizer.pad_token_id or 0,
                _load_teachers(cfg.transfer_teacher_list(), cfg, tokenizer), cfg.per_device_eval_batch_size)
            transfer_ensemble["transfer_teachers"] = cfg.transfer_teacher_list()
        if cfg.hidden_loss == "none" and not (cfg.mixup_alpha or cfg.online_mask_prob):  # no on-the-fly use
            teacher.to("cpu")
    trainer = DistillationTrainer(
        model=student, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=trainer_metrics, callbacks=callbacks,
        teacher=teacher, alpha=cfg.alpha, temperature=cfg.temperature, hidden_loss=cfg.hidden_loss,
        hidden_loss_weight=cfg.hidden_loss_weight, logit_cache=cache,
        teacher_dtype=teacher_dtype,
        mixup_alpha=cfg.mixup_alpha, online_mask_prob=cfg.online_mask_prob, shared_layers=shared,
        teacher_states=states)
    meta = {"train_rows": len(train_ds) - transfer_rows - augment_rows - len(transfer_views),
            "transfer_rows": transfer_rows, "transfer_window_rows": len(transfer_views), "augment_rows": augment_rows,
            "augment_targets": _augment_targets(cfg),
            "student_layer_map": layer_map, "teacher_logits_cached": cache is not None,
            "teacher_logits_cache_hit": cache_hit, "cross_fit": cross_fit, "transfer_ensemble": transfer_ensemble,
            "max_length_effective": max_length,
            "teacher_max_length_effective": teacher_length if cfg.alpha < 1.0 else None,
            "teacher_precision_effective": _teacher_precision(cfg, use_cuda, amp),
            "mixed_precision_effective": _amp_name(amp),
            "teacher_params": teacher_params, "dropout_path": dropout_path, "last_layer": last_layer,
            "frozen_parameters": frozen, "shared_layers": shared,
            "shared_layer_states_kept": _states_kept(states), "shared_layer_states_bottom_pass": bottom_rows,
            "mixup_targets": _view_targets(cfg, cfg.mixup_alpha),
            "online_mask_targets": _view_targets(cfg, cfg.online_mask_prob)}
    return _train_and_save(cfg, trainer, tokenizer, splits, out, resume_from, meta)


# ---------------------------------------------------------------- pieces
def _augment_targets(cfg: RunConfig) -> str:
    """What a student's windows and masked copies learn from: labels, teacher, or labels+teacher."""
    if cfg.alpha == 1.0:
        return "labels"
    return "labels+teacher" if cfg.augment_labels else "teacher"


def _cross_fit(cfg: RunConfig, folds, cache: torch.Tensor, ids, labels, tokenizer,
               views=None) -> tuple[torch.Tensor, dict]:
    """The cache with the labelled rows (and views, see cross_fit_logits) relabelled by the fold teachers
    (kdapp/cross_fit.py), and what they did."""
    folders, n_folds = folds
    models = _load_teachers([f for f, _ in folders], cfg, tokenizer)
    teachers = [(model, k) for model, (_, k) in zip(models, folders, strict=True)]
    cache, info = cross_fit_logits(cache, list(ids), list(labels), tokenizer.pad_token_id or 0, teachers, n_folds,
                                   cfg.per_device_eval_batch_size, views)
    return cache, info | {"fold_teachers": [str(f) for f, _ in folders]}


def _load_teachers(folders: list[str], cfg: RunConfig, tokenizer) -> list[torch.nn.Module]:
    """Further teachers (fold teachers, an ensemble) in fp32 on the run's device, each checked to share the
    student's tokenizer, with the last layer at [CLS] only where the run does that."""
    models = []
    for folder in folders:
        model, own_tok = load_pair(folder)
        check_same_tokenizer(own_tok, tokenizer)
        if cfg.last_layer_cls_only():
            use_cls_only(model)
        models.append(model.to("cuda" if torch.cuda.is_available() else "cpu"))
    return models


def _shared_layers(cfg: RunConfig, teacher, student) -> int:
    """How many of the student's first layers (with its embeddings) the teacher computes for it
    (kdapp/shared_prefix.py): none without --share_frozen_layers or a teacher, or with the hidden-state loss (it
    reads the student's own hidden states)."""
    if not cfg.share_frozen_layers or cfg.alpha == 1.0 or cfg.hidden_loss != "none" or not cfg.freeze_layers:
        return 0
    return shared_layers(teacher, student)


def _states_kept(states: list | None) -> int | None:
    """How many rows the cache pass kept the shared layers' states for (None: it kept none)."""
    return None if states is None else sum(row is not None for row in states)


def _view_targets(cfg: RunConfig, rate: float) -> str | None:
    """What labels an on-the-fly view (mixup, online masking): the teacher, or the labels for a no-KD student."""
    return None if not rate else "labels" if cfg.alpha == 1.0 else "teacher"


def _dropout_path(cfg: RunConfig, model, amp: torch.dtype | None) -> str:
    """Switch the trained model to kdapp's CPU dropout and attention when asked, on CPU in float32 or under bf16
    autocast (kdapp/dropout.py); what the metadata records."""
    if not cfg.fast_dropout or torch.cuda.is_available() or amp not in (None, torch.bfloat16):
        return "torch"
    use_fast_dropout(model)
    return "kdapp-cpu"


def _freeze(cfg: RunConfig, model) -> int:
    """Stop training what the run leaves as it is (the Trainer's optimizer and gradient clipping skip parameters
    without requires_grad): with cfg.freeze_word_embeddings the word embeddings; with cfg.freeze_layers = N every
    embedding and the first N encoder layers, so the backward pass stops above them. The number of parameters
    frozen, for the metadata."""
    frozen = [model.get_input_embeddings().weight] if cfg.freeze_word_embeddings else []
    if cfg.freeze_layers:
        layers, embeddings = encoder_layers(model), getattr(model.base_model, "embeddings", None)
        if cfg.freeze_layers >= len(layers):
            raise ValueError(f"freeze_layers {cfg.freeze_layers}: {type(model).__name__} has {len(layers)} encoder "
                             "layers, and at least one must stay trained")
        if embeddings is None:
            raise ValueError(f"freeze_layers: no embeddings module found in {type(model).__name__}")
        for module in (embeddings, *layers[:cfg.freeze_layers]):
            frozen.extend(module.parameters())
    unique = {id(p): p for p in frozen}
    for weight in unique.values():
        weight.requires_grad_(False)
    return sum(w.numel() for w in unique.values())


def _last_layer(cfg: RunConfig, model) -> str:
    """Switch the trained model's last layer to [CLS] only when asked and nothing reads its other positions (the
    hidden-state loss does); what the metadata records: cls-only or full."""
    if cfg.last_layer_cls_only() and use_cls_only(model):
        return "cls-only"
    return "full"


def _make_student(cfg: RunConfig, teacher, teacher_tok):
    """(student, tokenizer, layer map or None) for a hub id / folder, 'from-teacher' or 'from:<model>'."""
    if cfg.student == FROM_TEACHER:
        student = student_from_teacher(teacher, cfg.student_layers)
        return student, teacher_tok, student.config.kdapp_layer_map
    if cfg.student.startswith("from:"):
        source = cfg.student[len("from:"):]
        student = student_from_teacher(load_model(source), cfg.student_layers)
        return student, load_tokenizer(source), student.config.kdapp_layer_map
    student, tokenizer = load_pair(cfg.student)
    return student, tokenizer, None


def _prepare_output(cfg: RunConfig) -> tuple[Path, Path | None]:
    """Checks before any work: the run folder is free, and an interrupted run is resumed or cleared on purpose."""
    out = cfg.resolved_output_dir()
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} already exists: choose another --run_name / --output_dir or pass --overwrite")
    work = work_dir(out)
    last = last_trainer_checkpoint(work)
    if cfg.resume:
        if last is None:
            raise ValueError(f"--resume: no intermediate checkpoint under {work}/trainer to resume from")
        return out, last
    if last is not None and not cfg.overwrite:
        raise FileExistsError(f"{work} holds an interrupted run (last checkpoint {last.name}): pass --resume to "
                              "continue it or --overwrite to start over")
    shutil.rmtree(work, ignore_errors=True)
    if int(os.environ.get("RANK", "0")) == 0:  # the settings the app's Resume button restarts an interrupted run with
        work.mkdir(parents=True, exist_ok=True)
        write_json(work / "run_config.json", cfg.to_dict() | {"output_dir": str(out)})
    return out, None


def _check_max_length(cfg: RunConfig, *models) -> int:
    limit = min(getattr(m.config, "max_position_embeddings", cfg.max_length) for m in models)
    if cfg.max_length > limit:
        raise ValueError(f"max_length {cfg.max_length} is beyond the model's limit of {limit} positions; "
                         f"use --max_length {limit} or less")
    return cfg.max_length


def _check_teacher_length(cfg: RunConfig, teacher) -> int:
    length = cfg.teacher_max_length or cfg.max_length
    limit = getattr(teacher.config, "max_position_embeddings", length)
    if length > limit:
        raise ValueError(f"teacher_max_length {length} is beyond the teacher's limit of {limit} positions; "
                         f"use --teacher_max_length {limit} or less")
    return length


def _teacher_precision(cfg: RunConfig, use_cuda: bool, amp: torch.dtype | None) -> str | None:
    """What the teacher actually ran in (None: no teacher, the no-KD student)."""
    if cfg.alpha == 1.0:
        return None
    if cfg.teacher_precision == "auto":
        return "half" if use_cuda else _amp_name(amp)
    return cfg.teacher_precision


def augment_views(cfg: RunConfig, tokenizer, texts, labelled_ids, max_length: int) -> tuple[list, list[int]]:
    """The augmentation rows a run adds, made from the labelled reviews (their texts; their input ids as truncated for
    training): up to cfg.augment_windows further windows of each long review, then cfg.augment_masked copies of each
    with random [MASK] tokens. Returns the rows' input ids and each one's review (its index in texts)."""
    views, owner = [], []
    if cfg.augment_windows:
        views, owner = window_views(tokenizer, texts, max_length, cfg.augment_windows)
    if cfg.augment_masked:
        if tokenizer.mask_token_id is None:
            raise ValueError("augment_masked needs a tokenizer with a [MASK] token")
        views += masked_views(labelled_ids, tokenizer.mask_token_id, cfg.augment_masked, cfg.augment_mask_prob,
                              seed=cfg.seed, keep=frozenset(tokenizer.all_special_ids))
        owner += list(range(len(labelled_ids))) * cfg.augment_masked
    return views, owner


def _append_views(train_ds, views: list, labels: list[int]):
    """train_ds with the rows `views` (input ids) and their labels appended; 'idx' renumbered (the logit cache's)."""
    if not views:
        return train_ds
    extra = Dataset.from_dict({"label": labels, "input_ids": views,
                               "attention_mask": [[1] * len(v) for v in views], "idx": [0] * len(views)})
    train_ds = concatenate_datasets([train_ds, extra.cast(train_ds.features)])
    return train_ds.remove_columns("idx").add_column("idx", list(range(len(train_ds))))


def _tokenize(cfg: RunConfig, ds, tokenizer, max_length: int):
    return tokenize_dataset(ds, tokenizer, max_length, cfg.truncation, cfg.resolved_head_tokens(max_length))


def _set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


def mixed_precision_dtype(cfg: RunConfig, warn: bool = True) -> torch.dtype | None:
    """The autocast dtype the run trains in (None: float32). GPU: auto is bf16 where supported, else fp16. CPU: auto
    is float32 (results comparable across CPUs); bf16 on request, native on CPUs with AVX-512 BF16 or AMX (about
    1.5x faster steps there, docs/speed.md), emulated and slower than float32 elsewhere (a warning says so); fp16
    is refused (no fast CPU kernels). warn: False where the run itself will warn (an estimate, the app's check)."""
    if cfg.mixed_precision == "no":
        return None
    if torch.cuda.is_available():
        if cfg.mixed_precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
    if cfg.mixed_precision == "auto":
        return None
    if cfg.mixed_precision == "fp16":
        raise ValueError("mixed_precision fp16 needs a CUDA GPU; on CPU use bf16 (fast on CPUs with AVX-512 BF16 or "
                         "AMX) or no")
    if warn and not native_bf16():
        log.warning("mixed_precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX); PyTorch emulates it, "
                    "slower than float32. Use --mixed_precision no here.")
    return torch.bfloat16


def _amp_name(amp: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def _precision_flags(amp: torch.dtype | None) -> dict:
    return {} if amp is None else {"bf16": True} if amp == torch.bfloat16 else {"fp16": True}


def _training_args(cfg: RunConfig, out: Path, remove_unused_columns: bool,
                   amp: torch.dtype | None = None) -> TrainingArguments:
    warmup = cfg.warmup_steps if cfg.warmup_steps < 1 else int(cfg.warmup_steps)
    return TrainingArguments(
        output_dir=str(work_dir(out) / "trainer"), run_name=cfg.resolved_run_name(),
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        learning_rate=cfg.learning_rate, warmup_steps=warmup, weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear", seed=cfg.seed, data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        eval_strategy=cfg.eval_strategy, eval_steps=cfg.eval_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1,
        logging_strategy="steps", logging_steps=cfg.logging_steps, logging_first_step=True,
        report_to=tracking.report_to(cfg.report_to), remove_unused_columns=remove_unused_columns,
        label_names=["labels"], dataloader_num_workers=0, disable_tqdm=None,
        use_cpu=not torch.cuda.is_available(), **_precision_flags(amp))


def _train_and_save(cfg: RunConfig, trainer: Trainer, tokenizer, splits, out: Path, resume_from: Path | None,
                    meta: dict) -> RunResult:
    started = time.time()
    try:
        if resume_from is not None and _finished(resume_from):
            output = _restore_finished(trainer, resume_from)
        else:
            output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    except BaseException:
        tracking.finish_run()
        raise
    state = trainer.state
    if not trainer.is_world_process_zero():
        return RunResult("done", out, {}, "rank > 0: the main process writes the run", state.log_history)
    if state.global_step < state.max_steps:  # a callback stopped the run (Cancel)
        tracking.finish_run()
        kept = last_trainer_checkpoint(work_dir(out))
        if kept is None:
            shutil.rmtree(work_dir(out), ignore_errors=True)
        what = (f"intermediate checkpoint {kept} kept: resume with --resume" if kept else "nothing was saved")
        return RunResult("cancelled", None, {}, f"cancelled at step {state.global_step}/{state.max_steps}; {what}",
                         state.log_history)

    model = trainer.model
    model.eval()
    restore_dropout(model)  # the checkpoint says plain dropout and sdpa, loadable without kdapp
    restore_last_layer(model)
    metrics = {"train_runtime_s": round(output.metrics.get("train_runtime", time.time() - started), 2),
               "train_samples_per_second": output.metrics.get("train_samples_per_second"),
               "train_loss": output.metrics.get("train_loss"), "global_step": state.global_step,
               "params": count_parameters(model)}
    # int8 calibration from the first training reviews: prepare_model(load_model(out), "int8") smooths with it
    first = splits["train"].select(range(min(CALIBRATION_ROWS, len(splits["train"]))))
    ids = encode(tokenizer, first["text"], cfg.max_length, cfg.truncation, cfg.resolved_head_tokens())
    model.kdapp_int8_maxima = activation_maxima(model, ids, tokenizer.pad_token_id or 0)
    labels_preds, arrays = None, {}
    for split in ("validation", "test"):
        if split in splits:
            m, logits = score(model, tokenizer, splits[split]["text"], splits[split]["label"], cfg.max_length,
                              cfg.per_device_eval_batch_size, cfg.truncation, cfg.resolved_head_tokens())
            metrics[split] = m
            if split == "validation":
                labels_preds = (splits[split]["label"], logits.argmax(-1))
            arrays[f"{split}_logits"] = logits
    run_config = cfg.to_dict() | {"run_name": out.name, "output_dir": str(out), "meta": meta | _environment()}
    save_run(model, tokenizer, out, run_config, metrics, overwrite=cfg.overwrite, arrays=arrays,
             int8_maxima=model.kdapp_int8_maxima)
    tracking.finish_run({f"final/{k}": v for k, v in metrics["validation"].items()}, *labels_preds)
    log.info("run written to %s", out)
    return RunResult("done", out, metrics, f"saved {out}", state.log_history)


def _finished(checkpoint: Path) -> bool:
    state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    return state.max_steps > 0 and state.global_step >= state.max_steps


def _restore_finished(trainer: Trainer, checkpoint: Path) -> TrainOutput:
    """Training had ended and only the publish was interrupted: load the final weights instead of training.

    (Resuming from a checkpoint at max_steps makes transformers 5.24 run one step too many.)
    """
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    train_loss = sum(losses) / len(losses) if losses else None  # mean of the logged losses (approximate)
    return TrainOutput(trainer.state.global_step, train_loss, {"train_loss": train_loss, "train_runtime": 0.0})


def _environment() -> dict:
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "keep_freed_memory": memory.available(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)",
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}

