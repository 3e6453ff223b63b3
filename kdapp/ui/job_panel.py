"""The live view of a training job (curve, status, progress bar, Cancel, results) and the Start logic shared by the
teacher and distillation tabs. A gr.Timer polls `JobRegistry.snapshot`; only the job id lives in the page."""
from __future__ import annotations

import dataclasses
import html
import logging
from dataclasses import dataclass

import gradio as gr

from .. import plots
from ..config import RunConfig
from ..data import DataError
from ..estimate import estimate_run, format_duration
from ..jobs import JobBusy, JobSnapshot, Stage
from ..models import ModelError
from ..train import mixed_precision_dtype
from .common import AppContext, error_message

log = logging.getLogger(__name__)

TAB_OF_KIND = {"teacher": "Train teacher", "distill": "Distill student"}
POLL_S = 1.0


@dataclass
class JobPanel:
    job_id: gr.Textbox
    status: gr.Textbox
    progress: gr.HTML
    curve: gr.Plot
    results: gr.Markdown
    cancel: gr.Button
    timer: gr.Timer

    @property
    def start_outputs(self) -> list:
        return [self.job_id, self.status, self.timer]


def build_job_panel(ctx: AppContext, prefix: str, runs_version: gr.Number, curve_title: str,
                    cancel: gr.Button) -> JobPanel:
    """Status, progress bar, loss curve and results under a tab's form; `cancel` sits next to its Start button."""
    with gr.Group():
        status = gr.Textbox(label="Status", interactive=False, lines=2, elem_id=f"{prefix}_status")
        progress = gr.HTML(progress_html(None), elem_id=f"{prefix}_progress")
    curve = gr.Plot(plots.loss_curve([], curve_title), label="Loss curve", elem_id=f"{prefix}_curve")
    results = gr.Markdown(elem_id=f"{prefix}_results")
    job_id = gr.Textbox(visible="hidden", elem_id=f"{prefix}_job_id")
    timer = gr.Timer(POLL_S, active=False)
    panel = JobPanel(job_id, status, progress, curve, results, cancel, timer)

    def tick(jid: str):
        snap = ctx.registry.snapshot(jid)
        if snap is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.Timer(active=False), ctx.registry.generation
        return (plots.loss_curve(list(snap.history), curve_title), describe(snap), progress_html(snap),
                results_markdown(snap), gr.Timer(active=snap.running), ctx.registry.generation)

    def cancel_job(jid: str) -> str:
        snap = ctx.registry.snapshot(jid)
        if snap is None or not snap.running:
            active = ctx.registry.active()
            if active is None:
                return "No job is running."
            jid = active.id
        ctx.registry.cancel(jid)
        return "Cancel requested: the run stops at the end of the current optimizer step…"

    timer.tick(tick, job_id, [curve, status, progress, results, timer, runs_version], api_visibility="private",
               show_progress="hidden", concurrency_limit=None)
    cancel.click(cancel_job, job_id, status, api_name=f"cancel_{prefix}", concurrency_limit=None)
    return panel


def attach_latest(ctx: AppContext, kind: str):
    """demo.load: show the running (or last) job of this kind, so a reloaded page picks up where it was."""
    job = ctx.registry.latest(kind)
    if job is None:
        return gr.skip(), gr.Timer(active=False)
    return job.id, gr.Timer(active=True)  # one tick draws a finished job; a running one keeps the timer on


def start_job(ctx: AppContext, kind: str, title: str, stages: list[Stage], extra_nokd: bool = False):
    """Start handler body: refuse politely while a job runs, estimate the duration, start, return panel outputs."""
    busy = ctx.registry.active()
    if busy is not None:
        return _busy_outputs(kind, busy.snapshot())
    cfg = stages[0].cfg
    estimate, note = None, ""
    try:
        estimate = estimate_run(cfg, extra_nokd)
    except (ModelError, DataError) as e:  # the run itself would fail on this: say it now
        msg = error_message(e, ctx)
        gr.Warning(msg)
        return gr.skip(), f"Not started: {msg}", gr.skip()
    except Exception as e:  # noqa: BLE001  an estimate must never block a run
        log.warning("no estimate: %s", e)
        note = f"(no duration estimate: {e})"
    try:
        job = ctx.registry.start(title, kind, stages, estimate.seconds if estimate else None)
    except JobBusy as e:
        return _busy_outputs(kind, e.snapshot)
    lines = [f"Started {title}.", estimate.describe() if estimate else note]
    if estimate is not None and estimate.long_on_cpu:
        warning = (f"⚠️ LONG RUN: about {format_duration(estimate.seconds)} on this CPU. It runs anyway; press "
                   "Cancel to stop it, or use 'Quick CPU run' / fewer reviews / a shorter max length / a GPU.")
        gr.Warning(warning, duration=20)
        lines.insert(0, warning)
    return job.id, "\n".join(x for x in lines if x), gr.Timer(active=True)


def _busy_outputs(kind: str, snap: JobSnapshot):
    where = TAB_OF_KIND.get(snap.kind, snap.kind)
    msg = (f"A training job is already running: {snap.title} (step {snap.step}/{snap.total_steps or '?'}). "
           f"Watch it in the '{where}' tab; start this one when it ends, or cancel it there.")
    gr.Warning(msg)
    if snap.kind == kind:  # same tab kind: watch the running job here
        return snap.id, msg, gr.Timer(active=True)
    return gr.skip(), msg, gr.skip()


def build_config(kind: str, root, **values) -> RunConfig:
    """dataclasses.replace over RunConfig's defaults: its ValueError is the UI's message. The run folder goes under
    the app's checkpoints root."""
    cfg = dataclasses.replace(RunConfig(), kind=kind, **values)
    mixed_precision_dtype(cfg, warn=False)  # the run's own refusal (fp16 on a CPU), before a job starts
    name = cfg.resolved_run_name()
    return dataclasses.replace(cfg, run_name=name, output_dir=str(root / name))


# ---------------------------------------------------------------- text for the panel
def describe(snap: JobSnapshot) -> str:
    stage = f"{snap.stage} ({snap.stage_index + 1}/{snap.n_stages})" if snap.n_stages > 1 else snap.stage
    estimate = f" · estimate was {format_duration(snap.estimate_s)}" if snap.estimate_s else ""
    if snap.running:
        parts = [f"running · {stage} · {snap.phase}"]
        if snap.total_steps:
            parts.append(f"step {snap.step}/{snap.total_steps}")
        if snap.samples_per_second:
            parts.append(f"{snap.samples_per_second:.1f} samples/s")
        if snap.eta_s is not None:
            parts.append(f"ETA {format_duration(snap.eta_s)}")
        parts.append(f"elapsed {format_duration(snap.elapsed_s)}")
        return " · ".join(parts) + estimate + f"\n{snap.title}"
    if snap.status == "done":
        return f"done in {format_duration(snap.elapsed_s)}{estimate}\n{snap.message}"
    if snap.status == "cancelled":
        return f"{snap.message} (after {format_duration(snap.elapsed_s)})"
    return snap.status_line


def progress_html(snap: JobSnapshot | None) -> str:
    if snap is None:
        return "<div style='color:#777;font-size:0.9em;padding:4px 8px'>No job yet.</div>"
    total = max(snap.total_steps, 1)
    value = snap.step if snap.total_steps else 0
    rate = f" · {snap.samples_per_second:.1f} samples/s" if snap.samples_per_second else ""
    eta = f" · ETA {format_duration(snap.eta_s)}" if snap.eta_s is not None and snap.running else ""
    label = html.escape(f"{snap.stage}: step {snap.step} / {snap.total_steps or '?'}{rate}{eta} · {snap.status}")
    return (f"<div style='padding:4px 8px'><progress value='{value}' max='{total}' style='width:100%;height:14px'>"
            f"</progress><div style='font-size:0.9em'>{label}</div></div>")


def results_markdown(snap: JobSnapshot) -> str:
    rows = []
    for r in snap.results:
        v = (r.get("metrics") or {}).get("validation") or {}
        if r["status"] != "done" or not v:
            continue
        params = (r["metrics"].get("params") or 0) / 1e6
        seconds = format_duration(r["metrics"].get("train_runtime_s"))
        rows.append(f"| {r['stage']} | `{r['output_dir']}` | {v.get('accuracy', 0):.4f} | "
                    f"{v.get('f1_weighted', 0):.4f} | {v.get('ece', 0):.4f} | {params:.1f} M | {seconds} |")
    if not rows:
        return ""
    return ("**Finished runs** (validation split; new checkpoints now appear in every picker)\n\n"
            "| run | checkpoint | accuracy | F1 (weighted) | ECE | params | training time |\n"
            "|---|---|---|---|---|---|---|\n"
            + "\n".join(rows))
