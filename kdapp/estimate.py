"""How long will a run take on this machine? A rough estimate shown before every Start.

One timed forward+backward+AdamW step of the model's architecture (random weights built from its config: no
download) gives a cost per token and per step on this hardware; the run's rows, epochs and average review length
scale it. Measurements are cached per architecture, sequence length, device and thread count.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .cls_only import use_cls_only
from .config import FROM_TEACHER, RunConfig
from .data import FILE_FORMATS, LOCAL_HINT, DataError, read_source
from .hub import hub_reachable, looks_like_hub_id
from .models import ModelError, resolve
from .quantize import CALIBRATION_ROWS
from .train import mixed_precision_dtype

IMDB_TRAIN_ROWS, IMDB_TEST_ROWS = 25_000, 25_000
IMDB_MEAN_TOKENS = 300      # mean WordPiece tokens of an IMDb review (without truncation)
IMDB_UNSUPERVISED_ROWS = 50_000
CHARS_PER_TOKEN = 4.4       # for a quick length estimate of local files without tokenizing
OVERHEAD = 1.25             # data collation, logging, checkpoint writes, Python between steps
FIXED_S = 15.0              # loading the models and data, tokenizing
LONG_RUN_S = 3600.0         # warn above an hour on CPU
MEASURE_BATCH = 2           # the timed step's batch (small, so that a BERT-base estimate takes ~2 s on 2 cores)
BATCH_EFFICIENCY = 0.7      # a batch of 16 costs less per token than the timed batch of 2


@dataclass(frozen=True)
class Estimate:
    seconds: float
    device: str
    threads: int
    train_rows: int
    steps: int
    tokens_per_row: int
    detail: str

    @property
    def long_on_cpu(self) -> bool:
        return self.device == "cpu" and self.seconds > LONG_RUN_S

    def describe(self) -> str:
        where = f"{self.device}, {self.threads} thread{'s' if self.threads != 1 else ''}" if self.device == "cpu" \
            else self.device
        return (f"Estimated duration: about {format_duration(self.seconds)} on this machine ({where}); "
                f"{self.steps} optimizer steps on {self.train_rows} reviews of ~{self.tokens_per_row} tokens. "
                "A rough estimate from one timed training step.")


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- data size
@functools.lru_cache(maxsize=32)
def _file_stats(path: str, mtime: float, require_labels: bool = True) -> tuple[int, float, tuple[int, ...]]:
    """(rows, mean tokens per review, each sampled review's tokens) of a local file, from up to 400 texts."""
    import pandas as pd

    p = Path(path)
    fmt = FILE_FORMATS.get(p.suffix.lower())
    if fmt:  # the run's own checks (UTF-8, columns, 0/1 labels, rows), so a bad file is refused before the start
        read_source(path, require_labels)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(p)
        rows = f.metadata.num_rows
        texts = f.read_row_group(0, columns=["text"]).column("text").to_pylist()[:400]
    elif fmt in ("csv", "json"):
        df = pd.read_csv(p, sep="\t" if p.suffix.lower() == ".tsv" else ",") if fmt == "csv" else \
            pd.read_json(p, lines=p.suffix.lower() == ".jsonl")
        rows, texts = len(df), df["text"].astype(str).tolist()[:400]
    else:
        lines = [x for x in p.read_text(errors="replace").splitlines() if x.strip()]
        rows, texts = len(lines), lines[:400]
    mean_tokens = sum(len(t) for t in texts) / max(1, len(texts)) / CHARS_PER_TOKEN + 2
    return rows, mean_tokens, tuple(round(len(t) / CHARS_PER_TOKEN) for t in texts)


def data_stats(data: str) -> tuple[int, int, float, tuple[int, ...]]:
    """(rows of the training source, rows of its test split, mean tokens per review, a sample of review lengths in
    tokens: empty where the source is not a local file) without loading the data."""
    path = Path(data).expanduser()
    if path.is_file():
        rows, tokens, lengths = _file_stats(str(path), path.stat().st_mtime)
        return rows, 0, tokens, lengths
    if path.is_dir():  # aclImdb layout
        train = sum(1 for s in ("pos", "neg") for _ in (path / "train" / s).glob("*.txt"))
        test = sum(1 for s in ("pos", "neg") for _ in (path / "test" / s).glob("*.txt"))
        return train, test, IMDB_MEAN_TOKENS, ()
    if looks_like_hub_id(data):
        if not hub_reachable():
            raise DataError(f"Data {data!r} is on the Hugging Face hub, which is unreachable from here. {LOCAL_HINT}")
        return IMDB_TRAIN_ROWS, IMDB_TEST_ROWS, IMDB_MEAN_TOKENS, ()
    raise DataError(f"Data source {data!r} not found: expected 'imdb', a .parquet/.csv/.jsonl file or an aclImdb "
                    f"folder. {LOCAL_HINT}")


def transfer_stats(cfg: RunConfig, rows: int, train_rows: int, lengths: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(transfer reviews the run distils on, a sample of their lengths in tokens: empty where unknown) for
    cfg.transfer_data; rows, train_rows and lengths are the training source's."""
    spec = cfg.transfer_data if cfg.kind == "distill" else None
    if spec == "unsupervised":  # --data's own unlabelled split: the hub IMDb's or an aclImdb folder's
        data = Path(cfg.data).expanduser()
        if data.is_file():
            raise DataError(f"{cfg.data!r} has no unsupervised split; use transfer_data='rest' or a file.")
        # another hub dataset's split: its size is unknown here
        spec = "imdb:unsupervised" if cfg.data == "imdb" else str(data) if data.is_dir() else None
    if not spec:
        return 0, ()
    if spec == "rest":
        count, sample = max(0, int(rows * 0.9) - train_rows), lengths
    elif spec == "imdb:unsupervised":
        if not hub_reachable():
            raise DataError("transfer_data 'imdb:unsupervised' is on the Hugging Face hub, which is unreachable from "
                            "here: use 'rest' (the unused training reviews) or a local file of reviews.")
        count, sample = IMDB_UNSUPERVISED_ROWS, ()
    else:  # a file of reviews, or an aclImdb folder (its unsupervised split, else its training reviews)
        path = Path(spec).expanduser()
        if path.is_file():
            count, _, sample = _file_stats(str(path), path.stat().st_mtime, False)
        elif path.is_dir():
            count, sample = sum(1 for _ in (path / "train" / "unsup").glob("*.txt")) or data_stats(str(path))[0], ()
        else:
            raise DataError(f"transfer_data {spec!r} not found: expected 'rest', 'imdb:unsupervised', or a file or "
                            f"folder of reviews. {LOCAL_HINT}")
    return (min(count, cfg.transfer_samples) if cfg.transfer_samples else count), sample


def windows_per_review(lengths: tuple[int, ...], max_length: int, per_review: int) -> float:
    """Mean further windows per review that window augmentation adds (encoding.window_views' rule: up to
    `per_review` max_length windows after the first, none shorter than a quarter of one), over sampled lengths in
    tokens; 0 without a sample."""
    if not per_review or not lengths:
        return 0.0
    budget = max_length - 2
    return sum(sum(1 for start in range(budget, n, budget)[:per_review] if n - start >= budget // 4)
               for n in lengths) / len(lengths)


# ---------------------------------------------------------------- model cost
def model_config(name: str, layers: int | None = None):
    """The architecture of a hub id or folder (config.json only); `layers` shrinks it (a from-teacher student)."""
    from transformers import AutoConfig

    source = resolve(name)
    local = Path(source).is_dir()
    if not local and not hub_reachable():
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"Cannot use {name!r}: the Hugging Face hub is unreachable and it is not in the local "
                             "cache. Pick a local checkpoint or folder instead.") from e
    else:
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local)
        except (OSError, ValueError) as e:
            raise ModelError(f"Cannot read the config of {name!r}: {e}") from e
    if layers:
        config = copy.deepcopy(config)
        for attr in ("num_hidden_layers", "n_layers"):
            if hasattr(config, attr):
                setattr(config, attr, layers)
    config.num_labels = 2
    return config


@dataclass(frozen=True)
class StepCost:
    train_s_per_token: float    # forward + backward
    forward_s_per_token: float
    optimizer_s_per_step: float


_COSTS: dict[tuple, StepCost] = {}


def measure_step_cost(config, seq_len: int, device: str = "cpu", threads: int | None = None,
                      cls_only: bool = True, amp: torch.dtype | None = None) -> StepCost:
    """Time one forward+backward and one AdamW step of `config` at (2, seq_len) tokens; cached. cls_only: with the
    last layer at [CLS] only where the model allows, as kdapp's training and inference run it (kdapp/cls_only.py).
    amp: the passes under autocast to this dtype (mixed-precision training; None: float32)."""
    seq_len = int(min(max(16, seq_len), getattr(config, "max_position_embeddings", 512), 256))
    key = (config.to_json_string(), seq_len, device, threads or torch.get_num_threads(), cls_only, amp)
    if key in _COSTS:
        return _COSTS[key]
    old_threads = torch.get_num_threads()
    if threads and device == "cpu":
        torch.set_num_threads(threads)
    try:
        model = _random_model(config).to(device).train()
        if cls_only:
            use_cls_only(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        vocab = getattr(config, "vocab_size", 1000)
        autocast = functools.partial(torch.autocast, torch.device(device).type, dtype=amp, enabled=amp is not None)

        def step(batch: int, n: int) -> tuple[float, float, float]:
            ids = torch.randint(5, vocab, (batch, n), device=device)
            labels = torch.zeros(batch, dtype=torch.long, device=device)
            t0 = _now(device)
            with torch.no_grad(), autocast():
                model(input_ids=ids)
            t1 = _now(device)
            with autocast():
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            t2 = _now(device)
            opt.step()
            opt.zero_grad(set_to_none=True)
            t3 = _now(device)
            return t1 - t0, t2 - t1, t3 - t2

        step(MEASURE_BATCH, seq_len)  # warm-up: allocations, the AdamW state; a first step is slower
        fwd, fwd_bwd, opt_s = step(MEASURE_BATCH, seq_len)
        tokens = MEASURE_BATCH * seq_len
        cost = StepCost(fwd_bwd / tokens * BATCH_EFFICIENCY, fwd / tokens * BATCH_EFFICIENCY, opt_s)
    finally:
        torch.set_num_threads(old_threads)
    _COSTS[key] = cost
    return cost


def _random_model(config):
    """The architecture with N(0, 0.02) weights; skips the library's init (~9 s for bert-base on 2 busy cores)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = AutoModelForSequenceClassification.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    return model


def _now(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()  # note: a CPU-GPU sync point, so the clock sees finished work
    return time.perf_counter()


# ---------------------------------------------------------------- the run
def estimate_run(cfg: RunConfig, extra_nokd: bool = False) -> Estimate:
    """Seconds for `cfg` (plus a no-KD student run when `extra_nokd`), from one timed step; raises ModelError or
    DataError when the model or data cannot be reached (the same checks the run itself would fail on, only sooner)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = cfg.num_threads or torch.get_num_threads()
    rows, test_rows, mean_tokens, lengths = data_stats(cfg.data)
    train_rows = int(rows * 0.9)
    eval_rows = rows - train_rows
    if cfg.max_train_samples:
        train_rows = min(train_rows, cfg.max_train_samples)
    if cfg.max_eval_samples:
        eval_rows, test_rows = min(eval_rows, cfg.max_eval_samples), min(test_rows, cfg.max_eval_samples)
    tokens = int(min(cfg.max_length, mean_tokens * 1.05))  # truncation caps long reviews; padding adds a little

    transfer_rows, transfer_lengths = transfer_stats(cfg, rows, train_rows, lengths)
    masked_rows = train_rows * cfg.augment_masked  # fixed masked copies (a teacher's and a student's)
    # further windows of the long labelled (and transfer) reviews, from the sampled lengths
    labelled_windows = train_rows * windows_per_review(lengths, cfg.max_length, cfg.augment_windows)
    transfer_windows = transfer_rows * windows_per_review(transfer_lengths, cfg.max_length, cfg.transfer_windows)
    window_rows = round(labelled_windows + transfer_windows)
    all_rows = train_rows + transfer_rows + masked_rows + window_rows
    steps_per_epoch = math.ceil(all_rows / cfg.per_device_train_batch_size)
    steps = cfg.max_steps if cfg.max_steps > 0 else math.ceil(steps_per_epoch * cfg.num_train_epochs)
    trained_rows = min(all_rows * cfg.num_train_epochs, steps * cfg.per_device_train_batch_size) \
        if cfg.max_steps <= 0 else steps * cfg.per_device_train_batch_size
    n_evals = 0 if cfg.eval_strategy == "no" else max(1, math.ceil(cfg.num_train_epochs)) \
        if cfg.eval_strategy == "epoch" else max(1, steps // (cfg.eval_steps or cfg.logging_steps))

    if cfg.kind == "teacher":
        student_cfg, teacher_cfg = model_config(cfg.model), None
    else:
        teacher_cfg = model_config(cfg.teacher)
        if cfg.student == FROM_TEACHER:
            layers = cfg.student_layers or max(1, getattr(teacher_cfg, "num_hidden_layers", 2) // 2)
            student_cfg = model_config(cfg.teacher, layers)
        else:
            student_cfg = model_config(cfg.student.removeprefix("from:"), cfg.student_layers
                                       if cfg.student.startswith("from:") else None)
    limit = min(getattr(c, "max_position_embeddings", None) or cfg.max_length for c in (student_cfg, teacher_cfg) if c)
    if cfg.max_length > limit:  # the run would fail on this after loading everything (train._check_max_length)
        raise ModelError(f"max_length {cfg.max_length} is beyond the model's limit of {limit} positions; use "
                         f"--max_length {limit} or less")
    cls_only = cfg.last_layer_cls_only()
    amp = mixed_precision_dtype(cfg, warn=False)  # the teacher runs in it too where its precision is auto
    student = measure_step_cost(student_cfg, tokens, device, threads, cls_only, amp)
    token_count = trained_rows * tokens
    # views made on the fly (mixup, online masking): one more student forward + backward per step each
    views = int(cfg.mixup_alpha > 0) + int(cfg.online_mask_prob > 0) if cfg.kind == "distill" else 0
    seconds = (1 + views) * token_count * student.train_s_per_token + steps * student.optimizer_s_per_step
    # periodic + final validation, test, the int8 calibration pass over the first training reviews
    scored = (eval_rows * n_evals + eval_rows + test_rows + min(CALIBRATION_ROWS, train_rows)) * tokens
    seconds += scored * student.forward_s_per_token
    if teacher_cfg is not None and cfg.alpha < 1.0:
        teacher_amp = amp if cfg.teacher_precision == "auto" else None
        teacher = measure_step_cost(teacher_cfg, tokens, device, threads, cls_only, teacher_amp)
        cached = cfg.cache_teacher_logits and cfg.hidden_loss == "none"  # the hidden loss runs the teacher anyway
        teacher_tokens = (all_rows * tokens if cached else token_count) + views * token_count
        if cfg.fold_teachers:  # the fold teachers label the labelled rows (and views) once more, each its fold
            views_of_reviews = masked_rows + round(labelled_windows) if cfg.cross_fit_views else 0
            teacher_tokens += (train_rows + views_of_reviews) * tokens
        # each ensemble teacher labels the transfer rows and their windows once
        teacher_tokens += len(cfg.transfer_teacher_list()) * round(transfer_rows + transfer_windows) * tokens
        seconds += teacher_tokens * teacher.forward_s_per_token
    one_run = seconds * OVERHEAD + FIXED_S
    total = one_run
    if extra_nokd:  # same student, no teacher forward passes
        nokd_rows = train_rows * cfg.num_train_epochs if cfg.max_steps <= 0 else trained_rows  # no KD-only options
        total += (nokd_rows * tokens * student.train_s_per_token + steps * student.optimizer_s_per_step
                  + scored * student.forward_s_per_token) * OVERHEAD + FIXED_S
    detail = (f"{steps} steps x batch {cfg.per_device_train_batch_size}, ~{tokens} tokens per review, "
              f"{student.train_s_per_token * 1e3:.2f} ms per trained token")
    return Estimate(total, device, threads, train_rows, steps, tokens, detail)
