"""Helpers for the app tests: a checkpoints folder with tiny teacher / KD / no-KD runs, and a launched app."""
import socket

import numpy as np

from kdapp.checkpoints import save_run
from kdapp.metrics import classification_metrics


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
