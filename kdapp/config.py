"""RunConfig: every knob of one teacher or distillation run, shared by the CLI and the app.

Defaults are the seed's reference recipe (bert-base-uncased, 1 epoch, batch 16, LR 2e-5, alpha 0.5, T 2.0).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINTS_DIR = Path("checkpoints")
FROM_TEACHER = "from-teacher"  # --student value: make the student from the teacher's own layers


def _f(default: Any, help: str, kinds: str = "teacher,distill", **kw) -> Any:
    """A dataclass field with CLI metadata: its help text and the subcommands that show it."""
    return field(default=default, metadata={"help": help, "kinds": set(kinds.split(",")), **kw})


@dataclass
class RunConfig:
    """Everything needed to reproduce one teacher fine-tuning or distillation run."""

    kind: str = _f("teacher", "teacher or distill (set by the CLI subcommand)", kinds="")
    # models
    model: str = _f("bert-base-uncased", "Teacher to fine-tune: hub id or local folder.", kinds="teacher")
    teacher: str | None = _f(None, "Fine-tuned teacher: a checkpoint folder (or hub id).", kinds="distill")
    student: str = _f("distilbert-base-uncased",
                      f"Student: hub id, local folder, or '{FROM_TEACHER}' (copy every other teacher layer).",
                      kinds="distill")
    student_layers: int | None = _f(None, f"Layers of a '{FROM_TEACHER}' student (default: half the teacher's).",
                                    kinds="distill")
    # data
    data: str = _f("imdb", "'imdb' (hub), a parquet/CSV/JSON-lines file with text,label, or an aclImdb folder.")
    test_data: str | None = _f(None, "Separate test file (default: the test split of --data, if it has one).")
    max_train_samples: int | None = _f(None, "Use only the first N training rows (after the seed-42 shuffle).")
    max_eval_samples: int | None = _f(None, "Use only the first N validation (and test) rows.")
    max_length: int = _f(512, "Truncate reviews to this many tokens (batches are padded dynamically).")
    truncation: str = _f("head", "'head' keeps the first tokens; 'head_tail' keeps the first and last (Sun et al. 2019).")
    head_tokens: int | None = _f(None, "With head_tail: tokens kept from the start (default 128/512 of max_length).")
    holdout_fold: str | None = _f(None, "Cross-fitting: 'k/K' trains on the labelled rows outside fold k of K (rows "
                                        "i with i mod K = k of the seed-shuffled training split are held out), so "
                                        "that this teacher can label them for a student (--fold_teachers).",
                                  kinds="teacher")
    # optimisation (names as in TrainingArguments)
    num_train_epochs: float = _f(1.0, "Training epochs.")
    max_steps: int = _f(-1, "Stop after N optimizer steps (overrides epochs when > 0).")
    per_device_train_batch_size: int = _f(16, "Training batch size per device.")
    per_device_eval_batch_size: int = _f(64, "Evaluation batch size.")
    learning_rate: float = _f(2e-5, "Peak learning rate (AdamW).")
    warmup_steps: float = _f(0.0, "Linear warm-up: a fraction of all steps if < 1 (e.g. 0.1), else a step count; "
                                  "then linear decay to 0.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    seed: int = _f(42, "Seed for the split shuffle, init and data order.")
    group_by_length: bool = _f(True, "Batch reviews of similar length together (less padding, faster).")
    mixed_precision: str = _f("auto", "auto (bf16/fp16 on a GPU, fp32 on CPU), no, fp16 (GPU) or bf16 (GPU; on CPU "
                                      "native with AVX-512 BF16 or AMX: faster steps, the teacher in bf16 too).")
    attention_dropout: float | None = _f(None, "Dropout on the attention probabilities of the model being trained "
                                               "(default: the model's own, 0.1 for BERT and DistilBERT). 0 keeps "
                                               "PyTorch's fused attention kernel on CPU: faster steps, but a recipe "
                                               "change (docs/speed.md; its accuracy: docs/accuracy.md).")
    hidden_dropout: float | None = _f(None, "Dropout on the hidden states of the model being trained: after the "
                                            "embeddings, each attention and feed-forward block, and before the "
                                            "classifier (default: the model's own, 0.1 for BERT; DistilBERT's head "
                                            "0.2). 0 draws no masks: faster CPU steps, a recipe change "
                                            "(docs/speed.md; its accuracy: docs/accuracy.md).")
    fast_dropout: bool = _f(True, "CPU training: draw dropout masks with numpy's PCG64 and run attention with "
                                  "dropout as whole-tensor matmuls (in float32 block by block where that would keep "
                                  "over 128 MiB a layer; kdapp/dropout.py): the same Bernoulli masks, p rounded to "
                                  "1/65536; one KD epoch ran at 6.00 instead of 4.99 samples/s on 2 cores "
                                  "(docs/speed.md). Under bf16 autocast also attention in bf16 matmuls, with or "
                                  "without dropout (PyTorch's fused kernel has a slow bf16 backward on CPU). False: "
                                  "PyTorch's own.")
    freeze_word_embeddings: bool = _f(False, "Leave the word embeddings of the model being trained as they are (a "
                                             "student from the teacher keeps the teacher's): no gradient, AdamW "
                                             "state or update for the largest matrix (11.7M of a 3-layer MiniLM "
                                             "student's 17.4M parameters). Faster CPU steps; a recipe change "
                                             "(docs/speed.md; its accuracy: docs/accuracy.md).")
    freeze_layers: int = _f(0, "Leave the embeddings (all of them) and the first N encoder layers of the model "
                               "being trained as they are: no gradient, AdamW state or update, and the backward "
                               "pass stops above them (a student from the teacher keeps the teacher's). At least one "
                               "layer stays trained. Faster steps; a recipe change (docs/speed.md; its accuracy: "
                               "docs/accuracy.md). 0: none.")
    cls_only: bool = _f(True, "Compute the last layer at [CLS] only, the one position a classifier reads (keys and "
                              "values still from every token; kdapp/cls_only.py): the same logits and gradients, a "
                              "quarter less work for a 3-layer student. Off where every position is read (the "
                              "hidden-state loss). False: the full last layer.")
    share_frozen_layers: bool = _f(True, "Distillation: where the student's embeddings and first layers are frozen "
                                         "copies of the teacher's without dropout (a student made from the teacher "
                                         "with --freeze_layers, --hidden_dropout 0 and --attention_dropout 0), start "
                                         "the student at its first trained layer from the teacher's hidden state "
                                         "there instead of computing the same layers again (kdapp/shared_prefix.py; "
                                         "with --cache_teacher_logits while the states fit in a quarter of free "
                                         "memory). The same function of the input, in the teacher's precision. "
                                         "False: the student computes its own.", kinds="distill")
    # distillation
    alpha: float = _f(0.5, "Weight on CE(y, s); (1 - alpha) goes to T^2 * KL. alpha=1 is the no-KD student.",
                      kinds="distill")
    temperature: float = _f(2.0, "Softmax temperature T of the KD term.", kinds="distill")
    hidden_loss: str = _f("none", "Intermediate-layer loss on mapped hidden states: none, cosine or mse.",
                          kinds="distill")
    hidden_loss_weight: float = _f(1.0, "Weight of the hidden-state loss.", kinds="distill")
    transfer_data: str | None = _f(None, "Unlabelled reviews for KD only: 'rest' (unused training rows), "
                                         "'imdb:unsupervised', or a text/parquet/CSV/JSON-lines file.", kinds="distill")
    transfer_samples: int | None = _f(None, "Use at most N transfer reviews.", kinds="distill")
    augment_windows: int = _f(0, "Augmentation: up to N extra rows per long labelled review, each another "
                                 "max_length window of its text; a student's are KD-only rows labelled by the "
                                 "teacher (with alpha=1, no teacher: by the review's label), a teacher's carry the "
                                 "review's label.")
    transfer_windows: int = _f(0, "Up to N further max_length windows of each long transfer review, KD-only rows "
                                  "labelled by the teacher (what --augment_windows does for the labelled reviews). "
                                  "Needs --transfer_data.", kinds="distill")
    augment_masked: int = _f(0, "Augmentation: N copies of each labelled review with tokens replaced by [MASK] at "
                                "random (Tang et al. 2019); a student's are KD-only rows labelled by the teacher "
                                "(with alpha=1, no teacher: by the review's label), a teacher's carry the review's "
                                "label.")
    augment_mask_prob: float = _f(0.15, "Share of a masked copy's tokens replaced by [MASK].")
    augment_labels: bool = _f(False, "KD students: each window and masked copy of a labelled review "
                                     "(--augment_windows, --augment_masked) also carries the review's label in the "
                                     "CE term, as the review itself does, besides the teacher's soft targets "
                                     "(default: KD term only). A no-KD student always gives them the labels.",
                              kinds="distill")
    mixup_alpha: float = _f(0.0, "Mixup (MixKD, Liang et al. 2021): every step also trains on the batch's reviews "
                                 "mixed in pairs at the word embeddings, lam ~ Beta(a, a); the teacher labels each "
                                 "mix on the fly (KD term only; with alpha=1, no teacher: the mixed labels' CE). "
                                 "0: off; 0.4 is mixup's usual a.", kinds="distill")
    online_mask_prob: float = _f(0.0, "Online masking (consistent teaching, Beyer et al. 2022): every step also "
                                      "trains on the batch with fresh [MASK] tokens at this rate, labelled by the "
                                      "teacher on the same masked input, on the fly (KD term only; with alpha=1, no "
                                      "teacher: by the review's label). New masks every step and epoch, unlike "
                                      "--augment_masked's fixed copies. 0: off.", kinds="distill")
    cache_teacher_logits: bool = _f(False, "Compute the teacher's logits once and reuse them every epoch.",
                                    kinds="distill")
    teacher_max_length: int | None = _f(None, "Tokens the teacher reads when it labels the training rows for the "
                                              "logit cache (default: max_length). Longer than max_length, the "
                                              "teacher sees more of each review than the student (same truncation "
                                              "rule). Needs --cache_teacher_logits.", kinds="distill")
    teacher_precision: str = _f("auto", "The teacher's precision in distillation: auto (half precision on a GPU; "
                                        "on CPU bf16 under --mixed_precision bf16, else fp32), fp32 (also while "
                                        "the student trains in mixed precision: the exact fp32 soft targets), or "
                                        "int8 (CPU: dynamic quantization; faster teacher forwards, but it changes "
                                        "the soft targets: README, Accuracy).",
                                kinds="distill")
    fold_teachers: str | None = _f(None, "Cross-fitted soft targets: comma-separated folders of teachers trained "
                                         "with --holdout_fold 0/K ... K-1/K on the same data and rows; each labels "
                                         "the labelled reviews it held out, so the student learns from soft targets "
                                         "no teacher memorised (transfer rows and augmented views keep --teacher). "
                                         "Needs --cache_teacher_logits.", kinds="distill")
    cross_fit_views: bool = _f(False, "With --fold_teachers: the windows and masked copies of each labelled review "
                                      "(--augment_windows, --augment_masked) get their soft targets from the fold "
                                      "teacher that held that review out too, not from --teacher.", kinds="distill")
    transfer_teachers: str | None = _f(None, "Ensemble soft targets for the transfer set: comma-separated folders of "
                                             "teachers (same tokenizer) whose mean logits label the transfer reviews "
                                             "and their windows instead of --teacher's, e.g. the fold teachers of "
                                             "--fold_teachers (none trained on a transfer review). Needs "
                                             "--transfer_data and --cache_teacher_logits.", kinds="distill")
    # bookkeeping
    output_dir: str | None = _f(None, "Run folder (default checkpoints/<run_name>).")
    run_name: str | None = _f(None, "Run name (default <kind>-<model>-<time>).")
    overwrite: bool = _f(False, "Replace an existing run folder of the same name.")
    resume: bool = _f(False, "Resume from the last intermediate checkpoint of this output_dir.")
    save_steps: int = _f(500, "Write an intermediate Trainer checkpoint every N steps (for --resume).")
    logging_steps: int = _f(10, "Log the loss every N steps.")
    eval_strategy: str = _f("epoch", "When to evaluate on the validation split: epoch, steps or no.")
    eval_steps: int | None = _f(None, "With eval_strategy=steps: evaluate every N steps.")
    report_to: str = _f("none", "none or wandb (offline unless WANDB_API_KEY is set).")
    num_threads: int | None = _f(None, "CPU threads for torch (default: all cores).")

    def __post_init__(self):
        checks = [
            (self.kind in ("teacher", "distill"), f"kind must be 'teacher' or 'distill', got {self.kind!r}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}"),
            (self.num_train_epochs > 0 or self.max_steps > 0,
             f"num_train_epochs must be > 0 (or max_steps > 0), got {self.num_train_epochs}"),
            (self.per_device_train_batch_size > 0,
             f"per_device_train_batch_size must be > 0, got {self.per_device_train_batch_size}"),
            (self.per_device_eval_batch_size > 0,
             f"per_device_eval_batch_size must be > 0, got {self.per_device_eval_batch_size}"),
            (8 <= self.max_length <= 8192, f"max_length must be in [8, 8192], got {self.max_length}"),
            (self.warmup_steps >= 0 and (self.warmup_steps < 1 or float(self.warmup_steps).is_integer()),
             f"warmup_steps must be a fraction in [0, 1) or a whole number of steps, got {self.warmup_steps}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.attention_dropout is None or 0 <= self.attention_dropout < 1,
             f"attention_dropout must be in [0, 1), got {self.attention_dropout}"),
            (self.hidden_dropout is None or 0 <= self.hidden_dropout < 1,
             f"hidden_dropout must be in [0, 1), got {self.hidden_dropout}"),
            (self.truncation in ("head", "head_tail"), f"truncation must be head or head_tail, got {self.truncation!r}"),
            (self.hidden_loss in ("none", "cosine", "mse"), f"hidden_loss must be none, cosine or mse, got {self.hidden_loss!r}"),
            (self.hidden_loss_weight >= 0, f"hidden_loss_weight must be >= 0, got {self.hidden_loss_weight}"),
            (self.mixed_precision in ("auto", "no", "fp16", "bf16"),
             f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}"),
            (self.eval_strategy in ("epoch", "steps", "no"), f"eval_strategy must be epoch, steps or no, got {self.eval_strategy!r}"),
            (self.report_to in ("none", "wandb"), f"report_to must be none or wandb, got {self.report_to!r}"),
            (self.save_steps > 0 and self.logging_steps > 0, "save_steps and logging_steps must be > 0"),
        ]
        checks.append((isinstance(self.freeze_layers, int) and self.freeze_layers >= 0,
                       f"freeze_layers must be a whole number >= 0, got {self.freeze_layers}"))
        if self.student_layers is not None and self.student_layers > 0 and self.kind == "distill":
            checks.append((self.freeze_layers < self.student_layers,
                           f"freeze_layers ({self.freeze_layers}) must leave at least one of the student's "
                           f"{self.student_layers} layers trained"))
        for name in ("max_train_samples", "max_eval_samples", "transfer_samples", "student_layers", "num_threads"):
            value = getattr(self, name)
            checks.append((value is None or value > 0, f"{name} must be a positive integer, got {value}"))
        if self.teacher_max_length is not None:
            checks.append((8 <= self.teacher_max_length <= 8192,
                           f"teacher_max_length must be in [8, 8192], got {self.teacher_max_length}"))
        checks.append((self.teacher_precision in ("auto", "fp32", "int8"),
                       f"teacher_precision must be auto, fp32 or int8, got {self.teacher_precision!r}"))
        if self.head_tokens is not None:
            checks.append((0 <= self.head_tokens <= self.max_length - 2,
                           f"head_tokens must be in [0, max_length - 2 = {self.max_length - 2}], got {self.head_tokens}"))
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.kind == "distill" and not self.teacher:
            raise ValueError("kind='distill' needs teacher=<folder of a fine-tuned teacher run>")
        for name in ("augment_windows", "augment_masked", "transfer_windows"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0: off), got {self.mixup_alpha}")
        if not 0 <= self.online_mask_prob < 1:
            raise ValueError(f"online_mask_prob must be in [0, 1) (0: off), got {self.online_mask_prob}")
        if not 0 < self.augment_mask_prob < 1:
            raise ValueError(f"augment_mask_prob must be in (0, 1), got {self.augment_mask_prob}")
        if self.alpha == 1.0 and (self.transfer_data or self.hidden_loss != "none"):
            raise ValueError("alpha=1 is the no-KD student (no teacher): transfer_data and hidden_loss need "
                             "alpha < 1")
        if self.transfer_windows and not self.transfer_data:
            raise ValueError("transfer_windows (windows of the transfer reviews) needs transfer_data")
        if self.teacher_max_length not in (None, self.max_length):
            if self.alpha == 1.0 or not self.cache_teacher_logits or self.hidden_loss != "none":
                raise ValueError("teacher_max_length (a longer input for the teacher than for the student) needs "
                                 "alpha < 1, cache_teacher_logits and hidden_loss none: the teacher reads its "
                                 "longer inputs once, for the cache")
        if self.holdout_fold is not None:
            parse_fold(self.holdout_fold)
        if self.fold_teachers is not None:
            if not self.fold_teacher_list():
                raise ValueError("fold_teachers is empty: give the folders of the K fold teachers, comma-separated")
            if (self.alpha == 1.0 or not self.cache_teacher_logits or self.teacher_precision == "int8"
                    or self.hidden_loss != "none"):
                raise ValueError("fold_teachers (cross-fitted soft targets) needs alpha < 1, cache_teacher_logits and "
                                 "hidden_loss none, with the teacher in fp32 (teacher_precision auto or fp32): the "
                                 "fold teachers label the labelled rows once, for the cache")
        if self.transfer_teachers is not None:
            if not self.transfer_teacher_list():
                raise ValueError("transfer_teachers is empty: give the teachers' folders, comma-separated")
            if not self.transfer_data or not self.cache_teacher_logits or self.hidden_loss != "none":
                raise ValueError("transfer_teachers (ensemble soft targets for the transfer set) needs transfer_data, "
                                 "cache_teacher_logits and hidden_loss none: they label the transfer rows once, for "
                                 "the cache")
        if self.augment_labels and not (self.augment_windows or self.augment_masked):
            raise ValueError("augment_labels needs augment_windows or augment_masked: it labels those rows")
        if self.cross_fit_views and self.fold_teachers is None:
            raise ValueError("cross_fit_views needs fold_teachers: the fold teachers label the views of the reviews "
                             "they held out")
        if self.run_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.run_name):
            raise ValueError(f"run_name may hold letters, digits, '.', '_' and '-' only (max 100), got {self.run_name!r}")

    # ------------------------------------------------------------------ derived values
    @property
    def base_model(self) -> str:
        """The model whose weights are trained: the teacher's base, or the student."""
        return self.model if self.kind == "teacher" else self.student

    def resolved_run_name(self) -> str:
        if self.run_name:
            return self.run_name
        if self.output_dir:
            return Path(self.output_dir).name
        base = self.base_model if self.base_model != FROM_TEACHER else f"{Path(str(self.teacher)).name}-student"
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(base).name).strip("-") or "model"
        tag = "" if self.kind == "teacher" else ("-nokd" if self.alpha == 1.0 else "-kd")
        return f"{self.kind}-{slug}{tag}-{time.strftime('%Y%m%d-%H%M%S')}"

    def fold_teacher_list(self) -> list[str]:
        return split_folders(self.fold_teachers)

    def transfer_teacher_list(self) -> list[str]:
        return split_folders(self.transfer_teachers)

    def last_layer_cls_only(self) -> bool:
        """Whether the run computes its models' last layer at [CLS] only: asked for, and no hidden-state loss reads
        the other positions."""
        return self.cls_only and self.hidden_loss == "none"

    def resolved_output_dir(self) -> Path:
        if not (self.output_dir or self.run_name) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("under torchrun/accelerate pass --output_dir (or --run_name): every process must "
                             "agree on the run folder, and a timestamped default name may differ between them")
        return Path(self.output_dir) if self.output_dir else CHECKPOINTS_DIR / self.resolved_run_name()

    def resolved_head_tokens(self, max_length: int | None = None) -> int:
        """Head tokens of head_tail truncation at `max_length` (default: the run's): --head_tokens if given (at
        most what fits), else Sun et al.'s share, 128 head + 382 tail at 512."""
        max_length = max_length or self.max_length
        if self.head_tokens is not None:
            return min(self.head_tokens, max_length - 2)
        return round((max_length - 2) * 128 / 510)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def split_folders(value: str | None) -> list[str]:
    """The folders of a comma-separated list (empty items dropped)."""
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def parse_fold(spec: str) -> tuple[int, int]:
    """'k/K' -> (k, K), fold k of K (0 <= k < K, K >= 2)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(spec))
    if not match or not 0 <= int(match[1]) < int(match[2]) or int(match[2]) < 2:
        raise ValueError(f"holdout_fold must be 'k/K' with K >= 2 and 0 <= k < K (e.g. 0/4), got {spec!r}")
    return int(match[1]), int(match[2])


def cli_fields(kind: str) -> list[dataclasses.Field]:
    """The RunConfig fields a CLI subcommand exposes."""
    return [f for f in dataclasses.fields(RunConfig) if kind in f.metadata.get("kinds", ())]
