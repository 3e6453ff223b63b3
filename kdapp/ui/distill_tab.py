"""Tab "Distill student": teacher checkpoint, student, alpha/T and the recipe options -> a KD student (and the no-KD
student with alpha = 1, in the same job) with live curves of the total loss and its CE / KD parts."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from ..config import FROM_TEACHER, RunConfig, split_folders
from ..jobs import Stage
from ..sweep import NO_KD_OPTIONS
from ..train import distill_student
from .common import AppContext, Refresher, read_json, as_float, as_int, guarded, local_imdb, password_box
from .job_panel import attach_latest, build_config, build_job_panel, start_job
from .train_tab import default_threads, mixed_precision_radio

FROM_TEACHER_LABEL = "made from the teacher (every other layer)"
OTHER_LABEL = "hub id or local checkpoint"
STUDENT_MODELS = ["distilbert-base-uncased"]
DEFAULTS = RunConfig(kind="distill", teacher="-")


PRESET_FIELDS = ("num_train_epochs", "learning_rate", "warmup_steps", "truncation", "augment_windows", "augment_masked",
                 "cache_teacher_logits", "alpha", "temperature", "max_length", "per_device_train_batch_size",
                 "transfer_data", "transfer_samples", "max_train_samples", "data", "attention_dropout",
                 "transfer_windows", "augment_labels", "hidden_dropout", "weight_decay", "max_steps", "hidden_loss",
                 "teacher_max_length", "teacher_precision", "mixup_alpha", "online_mask_prob", "fold_teachers",
                 "cross_fit_views", "transfer_teachers", "mixed_precision", "freeze_word_embeddings", "freeze_layers",
                 "student_source", "student", "student_layers")
# what both presets leave at kdapp's defaults, as the form shows them: a click also undoes an option set before it
PRESET_DEFAULTS = dict(max_steps=0, hidden_loss="none", teacher_max_length=None, teacher_precision="auto",
                       mixup_alpha=0.0, online_mask_prob=0.0, fold_teachers="", cross_fit_views=False,
                       transfer_teachers="", mixed_precision="auto", freeze_word_embeddings=False, freeze_layers=0)


def model_names(ctx, folders: str | None) -> str | None:
    """A comma-separated list of model folders as the run gets it (each through ctx.model_name), None if empty."""
    return ",".join(ctx.model_name(f) for f in split_folders(folders)) or None


def recipe_preset(scale: str) -> dict:
    """kdapp's distillation recipe (benchmarks/accuracy.py at CPU scale; README's full-IMDb command on a GPU).

    CPU: kd-transfer-masked-windows of benchmarks/results/accuracy_cpu_avx512.md (2,000 unlabelled reviews, one
    masked copy of each labelled review and two further windows of each long one, a student of half the teacher's
    layers made from it); exactly this preset, with kdapp's CPU dropout, is kd-transfer-masked-windows-fastdrop of
    accuracy_cpu_amx_preset_fl1.md (87.79 % on the mean of three seeds). With the first layer frozen
    (--freeze_layers 1, 1.5x faster steps) it lost 0.28 points there, so the preset trains every layer. The same with
    every further training review (kd-transfer-all-masked-windows, Transfer reviews 0) is 0.84 points better over
    three seeds but takes about 3.7x the steps, so the preset keeps the CPU-scale 2,000. Attention dropout stays the
    model's own: switching it off is faster on CPU but cost kd-transfer-masked a point (kd-transfer-masked-ad0). GPU:
    no window augmentation (at 512 tokens few IMDb reviews have a further window, and it is not measured there), and
    the student distilbert-base-uncased, as README's command has it."""
    common = dict(num_train_epochs=2.0 if scale == "cpu" else 3.0, learning_rate=1e-4 if scale == "cpu" else 5e-5,
                  warmup_steps=0.1, weight_decay=0.01, truncation="head_tail", cache_teacher_logits=True, alpha=0.5,
                  temperature=2.0, augment_labels=False, **PRESET_DEFAULTS)
    if scale == "cpu":  # student_layers 0: half the teacher's (3 of MiniLM's 6)
        return common | dict(student_source=FROM_TEACHER_LABEL, student=gr.skip(), student_layers=0, max_length=256,
                             per_device_train_batch_size=16, transfer_data="rest",
                             transfer_samples=2000, max_train_samples=2000, data=gr.skip(), augment_masked=1,
                             augment_windows=2, transfer_windows=0, attention_dropout=None, hidden_dropout=None)
    return common | dict(student_source=OTHER_LABEL, student=STUDENT_MODELS[0], student_layers=gr.skip(),
                         max_length=512, per_device_train_batch_size=32, transfer_data="imdb:unsupervised",
                         transfer_samples=0, max_train_samples=0, data="imdb", augment_masked=0, augment_windows=0,
                         transfer_windows=0, attention_dropout=None, hidden_dropout=None)


def build_distill_tab(ctx: AppContext, runs_version: gr.Number):
    gr.Markdown("Distil a fine-tuned **teacher** into a smaller **student**: loss = alpha · CE(labels) + "
                "(1 − alpha) · T² · KL(teacher ‖ student). Tick *also train the no-KD student* to see what "
                "distillation buys: the same student trained with alpha = 1 (labels only).")
    no_teacher = gr.Markdown(visible=False, elem_id="distill_empty")
    with gr.Row():
        teacher = gr.Dropdown([], label="Teacher checkpoint", allow_custom_value=True, elem_id="distill_teacher",
                              scale=3, info="a fine-tuned teacher run (train one in 'Train teacher')")
        student_source = gr.Radio([FROM_TEACHER_LABEL, OTHER_LABEL], value=FROM_TEACHER_LABEL, label="Student",
                                  elem_id="distill_student_source", scale=2)
    with gr.Row():
        student_layers = gr.Number(0, label="Student layers (0 = half the teacher's)", precision=0,
                                   elem_id="distill_layers")
        student = gr.Dropdown(STUDENT_MODELS, value=STUDENT_MODELS[0], allow_custom_value=True,
                              label="Student model (hub id or local folder)", visible=False, elem_id="distill_student")
        data = gr.Dropdown([x for x in (local_imdb(), "imdb") if x], value=local_imdb() or "imdb",
                           allow_custom_value=True, label="Data", elem_id="distill_data")
    with gr.Row():
        alpha = gr.Slider(0, 1, value=DEFAULTS.alpha, step=0.05, label="alpha (weight on the labels' CE)",
                          elem_id="distill_alpha")
        temperature = gr.Slider(1, 10, value=DEFAULTS.temperature, step=0.5, label="T (temperature)",
                                elem_id="distill_temperature")
        also_nokd = gr.Checkbox(True, label="Also train the no-KD student (alpha = 1) afterwards",
                                elem_id="distill_also_nokd")
    with gr.Row():
        max_train = gr.Number(0, label="Training reviews (0 = all)", precision=0, elem_id="distill_max_train")
        max_eval = gr.Number(0, label="Validation reviews (0 = all)", precision=0, elem_id="distill_max_eval")
        epochs = gr.Number(DEFAULTS.num_train_epochs, label="Epochs", elem_id="distill_epochs")
        lr = gr.Number(DEFAULTS.learning_rate, label="Learning rate", elem_id="distill_lr")
    with gr.Row():
        batch = gr.Number(DEFAULTS.per_device_train_batch_size, label="Batch size", precision=0)
        max_length = gr.Number(DEFAULTS.max_length, label="Max length (tokens)", precision=0,
                               elem_id="distill_max_length")
        warmup = gr.Number(DEFAULTS.warmup_steps, label="Warm-up (fraction < 1, or steps)", elem_id="distill_warmup")
        weight_decay = gr.Number(DEFAULTS.weight_decay, label="Weight decay", elem_id="distill_weight_decay")
        wandb = gr.Checkbox(False, label="Log to W&B (offline files without a key)")
    with gr.Accordion("Advanced: recipe options", open=False):
        with gr.Row():
            truncation = gr.Radio(["head", "head_tail"], value=DEFAULTS.truncation, label="Truncation")
            transfer_data = gr.Radio(["none", "rest", "imdb:unsupervised"], value="none",
                                     label="Transfer set (KD term only)",
                                     info="'rest': the training reviews not used as labelled rows; "
                                          "'imdb:unsupervised': the hub's 50,000 unlabelled reviews")
            transfer_samples = gr.Number(0, label="Transfer reviews (0 = all)", precision=0)
            transfer_windows = gr.Number(DEFAULTS.transfer_windows, precision=0, elem_id="distill_transfer_windows",
                                         label="Transfer windows (KD-only windows per long transfer review)")
        with gr.Row():
            hidden_loss = gr.Radio(["none", "cosine", "mse"], value=DEFAULTS.hidden_loss, label="Hidden-state loss")
            hidden_loss_weight = gr.Number(DEFAULTS.hidden_loss_weight, label="Hidden-state loss weight")
            cache_logits = gr.Checkbox(DEFAULTS.cache_teacher_logits, label="Cache the teacher's logits")
            augment = gr.Number(DEFAULTS.augment_windows, label="Window augmentation (KD-only windows per long review)",
                                precision=0, elem_id="distill_augment")
            augment_masked = gr.Number(DEFAULTS.augment_masked, precision=0, elem_id="distill_augment_masked",
                                       label="Masked copies (KD-only copies of each review, 15 % of tokens [MASK])")
        with gr.Row():
            max_steps = gr.Number(0, label="Max steps (0 = use epochs)", precision=0, elem_id="distill_max_steps")
            logging_steps = gr.Number(DEFAULTS.logging_steps, label="Log every N steps", precision=0,
                                      elem_id="distill_logging_steps")
            eval_strategy = gr.Radio(["epoch", "steps", "no"], value=DEFAULTS.eval_strategy, label="Evaluate")
            seed = gr.Number(DEFAULTS.seed, label="Seed", precision=0)
            threads = gr.Number(default_threads(), label="CPU threads for training (empty = all)", precision=0)
            attention_dropout = gr.Number(None, label="Attention dropout (empty = the student's own, 0.1)",
                                          info="0 keeps the fused attention kernel: faster on CPU, but a "
                                               "recipe change (README)",
                                          elem_id="distill_attention_dropout")
            hidden_dropout = gr.Number(None, label="Hidden dropout (empty = the student's own, 0.1)",
                                       info="after the embeddings, each block and before the head; 0 draws no "
                                            "masks: faster on CPU, a recipe change (README); the no-KD student too",
                                       elem_id="distill_hidden_dropout")
            teacher_max_length = gr.Number(None, precision=0, elem_id="distill_teacher_max_length",
                                           label="Teacher max length (empty = Max length)",
                                           info="the teacher labels the cache from longer inputs than the student "
                                                "reads (needs the logit cache)")
            teacher_precision = gr.Radio(["auto", "fp32", "int8"], value=DEFAULTS.teacher_precision,
                                         label="Teacher precision", elem_id="distill_teacher_precision",
                                         info="auto: half on a GPU, fp32 on CPU; int8: a faster CPU teacher, but it changes "
                                              "the soft targets (README)")
            mixup_alpha = gr.Number(DEFAULTS.mixup_alpha, label="Mixup a (MixKD; 0 = off, 0.4 = mixup's usual)",
                                    info="each step also trains on the batch's reviews mixed in pairs, labelled by "
                                         "the teacher on the fly (README: Accuracy)",
                                    elem_id="distill_mixup_alpha")
            online_mask_prob = gr.Number(DEFAULTS.online_mask_prob, label="Online masking rate (0 = off, e.g. 0.15)",
                                         info="each step also trains on the batch with fresh [MASK] tokens, labelled "
                                              "by the teacher on the fly (README: Accuracy)",
                                         elem_id="distill_online_mask_prob")
            fold_teachers = gr.Textbox("", label="Fold teachers (cross-fitting; comma-separated folders)",
                                       info="teachers trained with Hold out fold 0/K ... K-1/K: each labels the "
                                            "reviews it did not see (needs the logit cache; README: Accuracy)",
                                       elem_id="distill_fold_teachers")
            cross_fit_views = gr.Checkbox(DEFAULTS.cross_fit_views, elem_id="distill_cross_fit_views",
                                          label="Fold teachers label each review's windows and masked copies too")
            augment_labels = gr.Checkbox(DEFAULTS.augment_labels, elem_id="distill_augment_labels",
                                         label="Windows and masked copies carry their review's label too",
                                         info="CE on the label besides the teacher's soft targets (default: the "
                                              "soft targets only)")
            transfer_teachers = gr.Textbox("", label="Transfer-set teachers (an ensemble; comma-separated folders)",
                                           info="their mean logits label the transfer reviews and their windows "
                                                "instead of the teacher's, e.g. the fold teachers (needs a transfer "
                                                "set and the logit cache)",
                                           elem_id="distill_transfer_teachers")
            mixed_precision = mixed_precision_radio("distill")
            freeze_words = gr.Checkbox(DEFAULTS.freeze_word_embeddings, elem_id="distill_freeze_word_embeddings",
                                       label="Freeze the student's word embeddings",
                                       info="faster CPU steps, no accuracy cost measured at CPU scale (README: "
                                            "Speed); the no-KD student too")
            freeze_layers = gr.Number(DEFAULTS.freeze_layers, precision=0, elem_id="distill_freeze_layers",
                                      label="Frozen bottom layers (with every embedding; 0 = none)",
                                      info="the student's first N layers stay the teacher's and the backward pass "
                                           "stops above them: 1.5x faster steps with N = 1, +0.37 points on "
                                           "labelled-only KD but -0.28 on the CPU preset (README: Speed); the no-KD "
                                           "student too")
            run_name = gr.Textbox("", label="Run name (empty = automatic)")
    password = password_box(ctx, "distill")
    with gr.Row():
        recipe_cpu = gr.Button("kdapp recipe (CPU scale)", elem_id="distill_recipe_cpu", scale=1)
        recipe_gpu = gr.Button("Full IMDb on a GPU (kdapp recipe)", elem_id="distill_recipe_gpu", scale=1)
        start = gr.Button("Start", variant="primary", elem_id="distill_start", scale=2)
        cancel = gr.Button("Cancel", variant="stop", elem_id="distill_cancel", scale=1)
    panel = build_job_panel(ctx, "distill", runs_version, "Distillation loss: total, CE and KD parts", cancel)

    form = [teacher, student_source, student, student_layers, data, max_train, max_eval, epochs, lr, batch,
            max_length, warmup, alpha, temperature, also_nokd, wandb, truncation, transfer_data, transfer_samples,
            hidden_loss, hidden_loss_weight, cache_logits, augment, augment_masked, max_steps, logging_steps,
            eval_strategy, seed, threads, run_name, attention_dropout, teacher_max_length, teacher_precision,
            mixup_alpha, online_mask_prob, fold_teachers, mixed_precision, transfer_windows, cross_fit_views,
            augment_labels, transfer_teachers, freeze_words, hidden_dropout, freeze_layers, weight_decay]

    @guarded(lambda msg: (gr.skip(), f"Not started: {msg}", gr.skip()), ctx)
    def start_distill(teacher, student_source, student, student_layers, data, max_train_samples, max_eval_samples,
                      num_train_epochs, learning_rate, batch_size, max_length, warmup_steps, alpha, temperature,
                      also_nokd, use_wandb, truncation, transfer_data, transfer_samples, hidden_loss,
                      hidden_loss_weight, cache_teacher_logits, augment_windows, augment_masked, max_steps,
                      logging_steps, eval_strategy, seed, num_threads, run_name, attention_dropout=None,
                      teacher_max_length=None, teacher_precision="auto", mixup_alpha=0.0, online_mask_prob=0.0,
                      fold_teachers="", mixed_precision="auto", transfer_windows=0, cross_fit_views=False,
                      augment_labels=False, transfer_teachers="", freeze_word_embeddings=False, hidden_dropout=None,
                      freeze_layers=0, weight_decay=0.0, password=""):
        """Start a distillation job (KD student, then optionally the no-KD student); returns (job id, status, timer)."""
        ctx.unlock(password)
        from_teacher = student_source != OTHER_LABEL
        teacher, data = ctx.model_name(teacher), ctx.data_name(data, [x for x in (local_imdb(), "imdb") if x])
        student = student if from_teacher else ctx.model_name(student)
        values = dict(
            teacher=(teacher or "").strip() or None, student=FROM_TEACHER if from_teacher else (student or "").strip(),
            student_layers=as_int(student_layers), data=(data or "").strip(),
            max_train_samples=as_int(max_train_samples), max_eval_samples=as_int(max_eval_samples),
            num_train_epochs=float(num_train_epochs or 0), learning_rate=float(learning_rate or 0),
            per_device_train_batch_size=as_int(batch_size, False) or 0, max_length=as_int(max_length, False) or 0,
            warmup_steps=float(warmup_steps or 0), alpha=float(alpha), temperature=float(temperature),
            report_to="wandb" if use_wandb else "none", truncation=truncation,
            transfer_data=None if transfer_data in (None, "", "none") else transfer_data,
            transfer_samples=as_int(transfer_samples), transfer_windows=as_int(transfer_windows) or 0,
            hidden_loss=hidden_loss,
            hidden_loss_weight=float(hidden_loss_weight or 0), cache_teacher_logits=bool(cache_teacher_logits),
            augment_windows=as_int(augment_windows) or 0, augment_masked=as_int(augment_masked) or 0,
            max_steps=as_int(max_steps) or -1, logging_steps=as_int(logging_steps, False) or 0,
            eval_strategy=eval_strategy, seed=as_int(seed, False) or 0, num_threads=as_int(num_threads),
            run_name=(run_name or "").strip() or None, attention_dropout=as_float(attention_dropout),
            teacher_max_length=as_int(teacher_max_length), teacher_precision=teacher_precision or "auto",
            mixup_alpha=as_float(mixup_alpha) or 0.0, online_mask_prob=as_float(online_mask_prob) or 0.0,
            fold_teachers=model_names(ctx, fold_teachers), cross_fit_views=bool(cross_fit_views),
            augment_labels=bool(augment_labels), transfer_teachers=model_names(ctx, transfer_teachers),
            mixed_precision=mixed_precision or "auto", freeze_word_embeddings=bool(freeze_word_embeddings),
            hidden_dropout=as_float(hidden_dropout), freeze_layers=as_int(freeze_layers) or 0,
            weight_decay=as_float(weight_decay) or 0.0)
        cfg = build_config("distill", ctx.root, **values)
        stages = [Stage("KD student" if cfg.alpha < 1 else "no-KD student", distill_student, cfg)]
        if also_nokd and cfg.alpha < 1:
            nokd_name = f"{values['run_name']}-nokd" if values["run_name"] else None
            nokd = build_config("distill", ctx.root, **(values | NO_KD_OPTIONS | dict(
                alpha=1.0, cache_teacher_logits=False, run_name=nokd_name)))
            stages.append(Stage("no-KD student", distill_student, nokd))
        title = " + ".join(f"{s.label} {s.cfg.run_name}" for s in stages)
        return start_job(ctx, "distill", title, stages, extra_nokd=len(stages) > 1)

    def on_student_source(source):
        other = source == OTHER_LABEL
        return gr.update(visible=not other), gr.update(visible=other)

    def on_teacher(path):
        """Prefill data, lengths and sample counts from the teacher's run, and half its layers."""
        try:
            path = ctx.model_name(path)  # a locked app reads no files outside the checkpoints root
        except ValueError:
            return (gr.skip(),) * 5
        rc = read_json(Path(path or "") / "run_config.json")
        cfg = read_json(Path(path or "") / "config.json")
        if not rc:
            return (gr.skip(),) * 5
        layers = cfg.get("num_hidden_layers") or cfg.get("n_layers")
        return (rc.get("data") or gr.skip(), rc.get("max_length") or gr.skip(), rc.get("max_train_samples") or 0,
                rc.get("max_eval_samples") or 0, gr.update(label=f"Student layers (0 = {max(1, layers // 2)}, half the "
                                                                f"teacher's {layers})") if layers else gr.skip())

    student_source.change(on_student_source, student_source, [student_layers, student], api_visibility="private")
    teacher.change(on_teacher, teacher, [data, max_length, max_train, max_eval, student_layers],
                   api_visibility="private")
    start.click(start_distill, form + [password], panel.start_outputs, api_name="start_distill")
    preset_outputs = dict(zip(PRESET_FIELDS, [epochs, lr, warmup, truncation, augment, augment_masked, cache_logits,
                                              alpha, temperature, max_length, batch, transfer_data, transfer_samples,
                                              max_train, data, attention_dropout, transfer_windows, augment_labels,
                                              hidden_dropout, weight_decay, max_steps, hidden_loss,
                                              teacher_max_length, teacher_precision, mixup_alpha, online_mask_prob,
                                              fold_teachers, cross_fit_views, transfer_teachers, mixed_precision,
                                              freeze_words, freeze_layers, student_source, student,
                                              student_layers],
                                  strict=True))
    for scale, button in (("cpu", recipe_cpu), ("gpu", recipe_gpu)):
        button.click(lambda scale=scale: tuple(recipe_preset(scale)[k] for k in PRESET_FIELDS), None,
                     list(preset_outputs.values()), api_name=f"recipe_{scale}")

    def refresh(current):
        choices = ctx.choices(("teacher",))
        values = [v for _, v in choices]
        value = current if current else (values[0] if values else None)
        hint = ("" if choices else "**No teacher checkpoint yet.** Train one in the *Train teacher* tab (try *Quick "
                "CPU run*), or type the folder of a fine-tuned teacher into the picker.")
        return gr.update(choices=choices, value=value), gr.update(value=hint, visible=not choices)

    refresher = Refresher(refresh, [teacher], [teacher, no_teacher])
    attach = Refresher(lambda: attach_latest(ctx, "distill"), [], [panel.job_id, panel.timer])
    return panel, refresher, attach
