"""The Gradio app: build_app() lays out the five tabs over one JobRegistry and one checkpoints folder.

Only this package imports gradio; the library never imports it.
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from .. import config as kd_config
from ..hub import hub_reachable
from ..jobs import JobRegistry
from .bench_tab import build_bench_tab
from .common import AppContext, Refresher
from .compare_tab import build_compare_tab
from .distill_tab import build_distill_tab
from .results_tab import build_results_tab
from .safety import launch_kwargs, queue_app  # noqa: F401  (re-exported for app.py)
from .train_tab import build_train_tab

TITLE = "kdapp: knowledge distillation for IMDb sentiment"
INTRO = ("# kdapp\nFine-tune a BERT **teacher** on IMDb reviews, distil it into a smaller **student**, and measure "
         "what distillation buys: accuracy, calibration, speed and size.")


def build_app(registry: JobRegistry | None = None, checkpoints_root: str | Path | None = None) -> gr.Blocks:
    """The whole app. `registry`: where training jobs live (one per process by default); `checkpoints_root`:
    the runs folder (default kdapp.config.CHECKPOINTS_DIR, read when the app is built)."""
    ctx = AppContext(registry or JobRegistry(), Path(checkpoints_root or kd_config.CHECKPOINTS_DIR))
    threading.Thread(target=hub_reachable, daemon=True).start()  # probe once, early: pickers never wait on it
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(INTRO)
        runs_version = gr.Number(ctx.registry.generation, visible="hidden", elem_id="runs_version")
        with gr.Tabs():
            with gr.Tab("Train teacher", id="train"):
                _, train_attach = build_train_tab(ctx, runs_version)
            with gr.Tab("Distill student", id="distill") as distill_tab:
                _, distill_refresh, distill_attach = build_distill_tab(ctx, runs_version)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare_refresh = build_compare_tab(ctx)
            with gr.Tab("Benchmark", id="bench") as bench_tab:
                bench_refresh = build_bench_tab(ctx)
            with gr.Tab("Results", id="results") as results_tab:
                results_refresh = build_results_tab(ctx)

        refreshers = [distill_refresh, compare_refresh, bench_refresh, results_refresh]
        for tab, r in zip((distill_tab, compare_tab, bench_tab, results_tab), refreshers):
            tab.select(r.fn, r.inputs, r.outputs, api_visibility="private", show_progress="hidden")
        refresh_all = _combine(refreshers)
        runs_version.change(refresh_all.fn, refresh_all.inputs, refresh_all.outputs, api_visibility="private",
                            show_progress="hidden")
        demo.load(refresh_all.fn, refresh_all.inputs, refresh_all.outputs, api_visibility="private")
        attach = _combine([train_attach, distill_attach])
        demo.load(attach.fn, attach.inputs, attach.outputs, api_visibility="private")

        def job_status(job_id: str = "") -> dict:
            """A job's snapshot as JSON (default: the running or last job): status, step, total_steps, history..."""
            job = ctx.registry.get(job_id) if job_id else (ctx.registry.active() or ctx.registry.latest())
            if job is None:
                return {"status": "none", "message": "no such job"}
            snap = job.snapshot()
            return asdict(snap) | {"status_line": snap.status_line}

        gr.api(job_status, api_name="job_status", concurrency_limit=None)
    demo.kdapp_context = ctx  # for tests and scripts
    return demo


def _combine(refreshers: list[Refresher]) -> Refresher:
    """One handler that runs several refreshers (each takes its own slice of the inputs)."""
    def fn(*values):
        out, i = [], 0
        for r in refreshers:
            result = r.fn(*values[i: i + len(r.inputs)])
            out.extend([result] if len(r.outputs) == 1 else result)
            i += len(r.inputs)
        return tuple(out)

    return Refresher(fn, list(itertools.chain(*(r.inputs for r in refreshers))),
                     list(itertools.chain(*(r.outputs for r in refreshers))))
