"""Helpers for the app tests: a checkpoints folder with tiny teacher / KD / no-KD runs, and a launched app."""
import socket

import numpy as np

from kdapp.checkpoints import save_run
from kdapp.metrics import classification_metrics


def handler(demo, api_name):
    """The Python function behind an event (handler-level tests need no server)."""
    return next(f.fn for f in demo.fns.values() if f.api_name == api_name)


def teacher_form(model, data, **kw):
    """start_teacher's arguments, in order, for a tiny run."""
    values = dict(model=str(model), data=str(data), max_train_samples=0, max_eval_samples=16, num_train_epochs=1,
                  learning_rate=1e-3, batch_size=8, max_length=16, warmup_steps=0, use_wandb=False, truncation="head",
                  eval_strategy="no", run_name="", max_steps=4, logging_steps=1, weight_decay=0, seed=42, num_threads=1)
    return values | kw


def make_runs(root, tokenizer, data, tiny_bert) -> dict:
    """Three whole runs (tiny random models, plausible metrics): teacher, kd and nokd students of that teacher."""
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    paths = {}
    for name, kind, layers, alpha, acc_noise in (("teacher-tiny", "teacher", 4, None, 0.5),
                                                 ("student-tiny-kd", "distill", 2, 0.5, 1.0),
                                                 ("student-tiny-nokd", "distill", 2, 1.0, 1.5)):
        logits = np.stack([-(labels * 2 - 1) * 1.0, (labels * 2 - 1) * 1.0], 1) + rng.normal(0, acc_noise, (40, 2))
        metrics = {"validation": classification_metrics(logits, labels) | {"samples_per_second": 100.0 * layers},
                   "params": 1000 * layers, "train_runtime_s": 1.0}
        run_config = {"kind": kind, "model": "tiny", "student": "from-teacher", "data": str(data), "max_length": 32,
                      "truncation": "head", "meta": {"student_layer_map": list(range(layers))}}
        if kind == "distill":
            run_config |= {"teacher": str(paths["teacher"]), "alpha": alpha, "temperature": 2.0}
        out = root / name
        save_run(tiny_bert(layers=layers, seed=layers), tokenizer, out, run_config, metrics)
        paths["teacher" if kind == "teacher" else ("kd" if alpha < 1 else "nokd")] = out
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(demo):
    """Start the app on 127.0.0.1 without blocking; returns its URL (close with demo.close())."""
    from kdapp.ui import launch_kwargs, queue_app

    _, url, _ = queue_app(demo).launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
                                       quiet=True, **launch_kwargs())
    return url
