"""Tab "Train teacher": a RunConfig form, a 'Quick CPU run' preset, Start -> a background job with a live loss curve."""
from __future__ import annotations

import os

import gradio as gr
import torch

from ..config import RunConfig
from ..estimate import estimate_run
from ..inference import native_bf16
from ..jobs import Stage
from ..checkpoints import INCOMPLETE, last_trainer_checkpoint, list_incomplete
from ..train import distill_student, train_teacher
from . import safety
from .common import AppContext, Refresher, as_float, as_int, guarded, local_imdb, password_box, read_json
from .job_panel import attach_latest, build_config, build_job_panel, start_job

TEACHER_MODELS = ["minilm", "bert-base-uncased", "distilbert-base-uncased"]
DEFAULTS = RunConfig()


def default_threads() -> int | None:
    """Training leaves one core to predictions and benchmarks (STACK_NOTES 0); a GPU run needs no choice."""
    return None if torch.cuda.is_available() else max(1, (os.cpu_count() or 2) - 1)


def mixed_precision_radio(tab: str) -> gr.Radio:
    """Training precision: auto (fp32 on CPU, bf16/fp16 on a GPU), no, bf16, fp16 (GPU only)."""
    choices = ["auto", "no", "bf16"] + (["fp16"] if torch.cuda.is_available() else [])
    here = ("a GPU" if torch.cuda.is_available() else
            f"a CPU {'with' if native_bf16() else 'without'} native bf16")
    return gr.Radio(choices, value=DEFAULTS.mixed_precision, label="Mixed precision", elem_id=f"{tab}_mixed_precision",
                    info=f"auto: bf16/fp16 on a GPU, fp32 on CPU; bf16 on a CPU with AVX-512 BF16 or AMX trains "
                         f"faster, elsewhere slower (README: Speed). This is {here}.")


def quick_preset() -> dict:
    """all-MiniLM-L6-v2 on ~300 reviews at 128 tokens: a few minutes on 2 CPU cores."""
    return dict(model="minilm", data=local_imdb() or "imdb", max_train_samples=300, max_eval_samples=200,
                num_train_epochs=1.0, learning_rate=1e-4, per_device_train_batch_size=16, max_length=128,
                warmup_steps=0.1, augment_windows=0, augment_masked=0)


# the form's other options as a teacher run has them by default (as the form shows them): both presets reset them
TEACHER_RESETS = dict(max_steps=0, attention_dropout=None, holdout_fold="", mixed_precision="auto")
QUICK_RESETS = dict(truncation="head", weight_decay=0.0, **TEACHER_RESETS)


def gpu_preset() -> dict:
    """The full-scale teacher of README's GPU recipe: bert-base-uncased on all of IMDb from the hub; the options it
    leaves at kdapp's defaults are reset too (a held-out fold or a step limit set before the click would change it)."""
    return dict(model="bert-base-uncased", data="imdb", max_train_samples=0, max_eval_samples=0, num_train_epochs=3.0,
                learning_rate=2e-5, per_device_train_batch_size=32, max_length=512, warmup_steps=0.1,
                truncation="head_tail", weight_decay=0.01, augment_windows=0, augment_masked=0, **TEACHER_RESETS)


def data_choices() -> list[str]:
    return [x for x in (local_imdb(), "imdb") if x]


def incomplete_choices(ctx: AppContext) -> list[tuple[str, str]]:
    """(label, path) of each interrupted run under the checkpoints root that can be resumed."""
    out = []
    for work in list_incomplete(ctx.root):
        kind = read_json(work / "run_config.json").get("kind", "?")
        out.append((f"{work.name[:-len(INCOMPLETE)]} · {kind} · {last_trainer_checkpoint(work).name}", str(work)))
    return out


def build_train_tab(ctx: AppContext, runs_version: gr.Number):
    gr.Markdown("Fine-tune a **teacher** on labelled reviews with cross-entropy. New to this? Press "
                "**Quick CPU run**, then **Start**: a small model on a few hundred reviews, a few minutes on a CPU.")
    with gr.Row():
        model = gr.Dropdown(TEACHER_MODELS, value=DEFAULTS.model, allow_custom_value=True, label="Model",
                            info="hub id, local folder, or 'minilm' (the pip-installed all-MiniLM-L6-v2)",
                            elem_id="train_model", scale=2)
        data = gr.Dropdown(data_choices(), value=local_imdb() or "imdb",
                           allow_custom_value=True, label="Data", elem_id="train_data", scale=2,
                           info="'imdb' (hub), or a .parquet/.csv/.jsonl file with text,label")
    upload = gr.File(label=f"…or upload a data file (.parquet / .csv / .jsonl with columns text,label; at most "
                           f"{safety.max_upload_mb():g} MB): it replaces Data", file_types=list(safety.UPLOAD_TYPES),
                     type="filepath", elem_id="train_upload", height=90)
    with gr.Row():
        max_train = gr.Number(0, label="Training reviews (0 = all)", precision=0, elem_id="train_max_train")
        max_eval = gr.Number(0, label="Validation reviews (0 = all)", precision=0, elem_id="train_max_eval")
        epochs = gr.Number(DEFAULTS.num_train_epochs, label="Epochs", elem_id="train_epochs")
        lr = gr.Number(DEFAULTS.learning_rate, label="Learning rate", elem_id="train_lr")
    with gr.Row():
        batch = gr.Number(DEFAULTS.per_device_train_batch_size, label="Batch size", precision=0, elem_id="train_batch")
        max_length = gr.Number(DEFAULTS.max_length, label="Max length (tokens)", precision=0,
                               elem_id="train_max_length")
        warmup = gr.Number(DEFAULTS.warmup_steps, label="Warm-up (fraction < 1, or steps)", elem_id="train_warmup")
        wandb = gr.Checkbox(False, label="Log to W&B (offline files without a key)", elem_id="train_wandb")
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            truncation = gr.Radio(["head", "head_tail"], value=DEFAULTS.truncation, label="Truncation",
                                  info="head_tail keeps the start and the end of long reviews")
            eval_strategy = gr.Radio(["epoch", "steps", "no"], value=DEFAULTS.eval_strategy, label="Evaluate")
            run_name = gr.Textbox("", label="Run name (empty = automatic)")
        with gr.Row():
            max_steps = gr.Number(0, label="Max steps (0 = use epochs)", precision=0, elem_id="train_max_steps")
            logging_steps = gr.Number(DEFAULTS.logging_steps, label="Log every N steps", precision=0,
                                      elem_id="train_logging_steps")
            weight_decay = gr.Number(DEFAULTS.weight_decay, label="Weight decay")
            seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
            threads = gr.Number(default_threads(), label="CPU threads for training (empty = all)", precision=0,
                                info="one core is left to predictions and benchmarks")
            attention_dropout = gr.Number(None, label="Attention dropout (empty = the model's own, 0.1)",
                                          info="0 keeps the fused attention kernel: faster on CPU, but a "
                                               "recipe change (README)",
                                          elem_id="train_attention_dropout")
            holdout_fold = gr.Textbox("", label="Hold out fold k/K (cross-fitting; empty = train on every row)",
                                      info="e.g. 0/4: a fold teacher that labels the quarter it did not see, for "
                                           "the Distill tab's fold teachers (README: Accuracy)",
                                      elem_id="train_holdout_fold")
            mixed_precision = mixed_precision_radio("train")
        with gr.Row():
            augment = gr.Number(DEFAULTS.augment_windows, precision=0, elem_id="train_augment",
                                label="Window augmentation (further windows per long review, with its label)")
            augment_masked = gr.Number(DEFAULTS.augment_masked, precision=0, elem_id="train_augment_masked",
                                       label="Masked copies (of each review, 15 % of tokens [MASK], with its label)")
    password = password_box(ctx, "train")
    with gr.Row():
        quick = gr.Button("Quick CPU run (preset)", elem_id="train_quick")
        full_gpu = gr.Button("Full IMDb on a GPU (preset)", elem_id="train_gpu")
        start = gr.Button("Start", variant="primary", elem_id="train_start")
        cancel = gr.Button("Cancel", variant="stop", elem_id="train_cancel")
    panel = build_job_panel(ctx, "train", runs_version, "Teacher training loss", cancel)
    with gr.Accordion("Resume an interrupted run", open=False):
        with gr.Row():
            resume_run = gr.Dropdown(incomplete_choices(ctx), value=None, label="Interrupted runs (teacher or student) "
                                     "with an intermediate Trainer checkpoint", elem_id="train_resume_run", scale=3)
            resume = gr.Button("Resume", elem_id="train_resume", scale=1)

    form = [model, data, max_train, max_eval, epochs, lr, batch, max_length, warmup, wandb, truncation, eval_strategy,
            run_name, max_steps, logging_steps, weight_decay, seed, threads, attention_dropout, holdout_fold,
            mixed_precision, augment, augment_masked]

    def config_from_form(model, data, max_train_samples, max_eval_samples, num_train_epochs, learning_rate,
                         batch_size, max_length, warmup_steps, use_wandb, truncation, eval_strategy, run_name,
                         max_steps, logging_steps, weight_decay, seed, num_threads,
                         attention_dropout=None, holdout_fold=None, mixed_precision="auto", augment_windows=0,
                         augment_masked=0) -> RunConfig:
        return build_config("teacher", ctx.root, model=ctx.model_name(model), data=data,
                            max_train_samples=as_int(max_train_samples), max_eval_samples=as_int(max_eval_samples),
                            num_train_epochs=float(num_train_epochs or 0), learning_rate=float(learning_rate or 0),
                            per_device_train_batch_size=as_int(batch_size, False) or 0,
                            max_length=as_int(max_length, False) or 0, warmup_steps=float(warmup_steps or 0),
                            report_to="wandb" if use_wandb else "none", truncation=truncation,
                            eval_strategy=eval_strategy, run_name=(run_name or "").strip() or None,
                            max_steps=as_int(max_steps) or -1, logging_steps=as_int(logging_steps, False) or 0,
                            weight_decay=float(weight_decay or 0), seed=as_int(seed, False) or 0,
                            num_threads=as_int(num_threads), attention_dropout=as_float(attention_dropout),
                            holdout_fold=(holdout_fold or "").strip() or None,
                            mixed_precision=mixed_precision or "auto",
                            augment_windows=as_int(augment_windows) or 0, augment_masked=as_int(augment_masked) or 0)

    @guarded(lambda msg: (gr.skip(), f"Not started: {msg}", gr.skip()), ctx)
    def start_teacher(model, data, max_train_samples, max_eval_samples, num_train_epochs, learning_rate,
                      batch_size, max_length, warmup_steps, use_wandb, truncation, eval_strategy, run_name,
                      max_steps, logging_steps, weight_decay, seed, num_threads, attention_dropout=None,
                      holdout_fold=None, mixed_precision="auto", augment_windows=0, augment_masked=0, upload=None,
                      password=""):
        """Start fine-tuning a teacher in the background; returns (job id, status, timer)."""
        ctx.unlock(password)
        data = safety.check_upload(upload) or ctx.data_name(data, data_choices())
        cfg = config_from_form(model, data, max_train_samples, max_eval_samples, num_train_epochs, learning_rate,
                               batch_size, max_length, warmup_steps, use_wandb, truncation, eval_strategy, run_name,
                               max_steps, logging_steps, weight_decay, seed, num_threads, attention_dropout,
                               holdout_fold, mixed_precision, augment_windows, augment_masked)
        return start_job(ctx, "teacher", f"teacher {cfg.run_name}", [Stage("teacher", train_teacher, cfg)])

    def quick_values() -> tuple:
        p = quick_preset()
        return (p["model"], p["data"], p["max_train_samples"], p["max_eval_samples"], p["num_train_epochs"],
                p["learning_rate"], p["per_device_train_batch_size"], p["max_length"], p["warmup_steps"],
                p["augment_windows"], p["augment_masked"], *QUICK_RESETS.values())

    @guarded(lambda msg: (*quick_values(), f"Preset filled; no estimate: {msg}"), ctx)  # filled all the same
    def fill_quick():
        cfg = build_config("teacher", ctx.root, **quick_preset(), num_threads=default_threads())
        estimate = estimate_run(cfg)
        return (*quick_values(), f"Quick CPU run preset filled: press Start. {estimate.describe()}")

    @guarded(lambda msg: (gr.skip(), f"Not resumed: {msg}", gr.skip()), ctx)
    def resume_interrupted(run: str, password: str = ""):
        """Resume an interrupted run (listed under the checkpoints root) from its last Trainer checkpoint."""
        ctx.unlock(password)
        work = next((p for p in list_incomplete(ctx.root) if str(p) == run), None)
        if work is None:
            raise ValueError("Pick an interrupted run from the list (it holds the Trainer checkpoints to resume from).")
        saved = read_json(work / "run_config.json")
        if not saved:
            raise ValueError(f"{work.name} has no run_config.json (started before kdapp saved it): resume it with the "
                             "CLI, passing the same flags and --resume.")
        out = work.with_name(work.name[:-len(INCOMPLETE)])  # the run folder it will be published to
        cfg = RunConfig.from_dict(saved | {"resume": True, "output_dir": str(out)})
        fn, label = (train_teacher, "teacher") if cfg.kind == "teacher" else (distill_student, "student")
        return start_job(ctx, cfg.kind, f"resumed {label} {cfg.resolved_run_name()}", [Stage(label, fn, cfg)])

    start.click(start_teacher, form + [upload, password], panel.start_outputs, api_name="start_teacher")
    resume.click(resume_interrupted, [resume_run, password], panel.start_outputs, api_name="resume_run")
    runs_version.change(lambda: gr.update(choices=incomplete_choices(ctx)), None, resume_run,
                        api_visibility="private", show_progress="hidden")
    quick.click(fill_quick, None, [model, data, max_train, max_eval, epochs, lr, batch, max_length, warmup, augment,
                                   augment_masked, truncation, weight_decay, max_steps, attention_dropout, holdout_fold,
                                   mixed_precision, panel.status], api_name="quick_preset")
    full_gpu.click(lambda: tuple(gpu_preset().values()), None,
                   [model, data, max_train, max_eval, epochs, lr, batch, max_length, warmup, truncation, weight_decay,
                    augment, augment_masked, max_steps, attention_dropout, holdout_fold, mixed_precision],
                   api_name="gpu_preset")
    attach = Refresher(lambda: (*attach_latest(ctx, "teacher"), gr.update(choices=incomplete_choices(ctx))), [],
                       [panel.job_id, panel.timer, resume_run])
    return panel, attach
