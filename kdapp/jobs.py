"""Training jobs for the app: a daemon thread per job, frozen progress snapshots, cancel within one optimizer step.

The worker never touches the UI and the UI never touches the Trainer: they meet only at `Job.snapshot()`.
One training job runs at a time (`JobRegistry.start` raises `JobBusy` while one is running).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from transformers import TrainerCallback

from .redact import redact

log = logging.getLogger(__name__)

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"


@dataclass(frozen=True)
class Stage:
    """One run inside a job: `fn(cfg, callbacks=[...]) -> RunResult` (train_teacher or distill_student)."""
    label: str
    fn: Callable
    cfg: object


@dataclass(frozen=True)
class JobSnapshot:
    """A copy of a job's progress; the UI reads only these."""
    id: str
    title: str
    kind: str
    status: str                      # running | done | cancelled | failed
    stage: str = ""                  # label of the current (or last) stage
    stage_index: int = 0             # 0-based
    n_stages: int = 1
    phase: str = "starting"          # starting | training | evaluating | saving | finished
    step: int = 0
    total_steps: int = 0
    samples_per_second: float | None = None
    eta_s: float | None = None       # seconds left in the current stage
    elapsed_s: float = 0.0
    estimate_s: float | None = None  # the estimate shown before the start
    history: tuple = ()              # Trainer log dicts + {'step', 'stage'}
    results: tuple = ()              # per finished stage: {'stage', 'status', 'output_dir', 'metrics', 'message'}
    message: str = ""
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    @property
    def status_line(self) -> str:
        """'running', 'done', 'cancelled' or 'failed: <why>'."""
        return f"{FAILED}: {self.error}" if self.status == FAILED else self.status


class Job:
    """Runs its stages one after another on a daemon thread; `cancel()` stops the Trainer at the next step end."""

    def __init__(self, job_id: str, title: str, kind: str, stages: list[Stage], estimate_s: float | None = None,
                 on_finish: Callable[["Job"], None] | None = None):
        if not stages:
            raise ValueError("a job needs at least one stage")
        self.id, self.title, self.kind, self.stages = job_id, title, kind, list(stages)
        self.estimate_s = estimate_s
        self._on_finish = on_finish
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"kdapp-job-{job_id}", daemon=True)
        self._started = time.time()
        self._state = dict(status=RUNNING, stage=self.stages[0].label, stage_index=0, phase="starting", step=0,
                           total_steps=0, samples_per_second=None, eta_s=None, message="", error=None)
        self._history: list[dict] = []
        self._results: list[dict] = []
        self.traceback: str | None = None

    # ------------------------------------------------------------ control
    def start(self) -> "Job":
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """True when the job has finished within `timeout` seconds."""
        return self._done.wait(timeout)

    def running(self) -> bool:
        return not self._done.is_set()

    # ------------------------------------------------------------ progress (called from the worker thread)
    def update(self, **values) -> None:
        with self._lock:
            self._state.update(values)

    def record(self, step: int, total_steps: int, logs: dict) -> None:
        entry = {k: v for k, v in logs.items() if isinstance(v, (int, float, str))}
        with self._lock:
            entry.update(step=step, stage=self._state["stage"])
            self._history.append(entry)
            self._state.update(step=step, total_steps=total_steps or self._state["total_steps"])

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return JobSnapshot(id=self.id, title=self.title, kind=self.kind, n_stages=len(self.stages),
                               elapsed_s=round(time.time() - self._started, 1), estimate_s=self.estimate_s,
                               history=tuple(dict(h) for h in self._history),
                               results=tuple(dict(r) for r in self._results), **self._state)

    # ------------------------------------------------------------ the worker
    def _run(self) -> None:
        try:
            for i, stage in enumerate(self.stages):
                if self._cancel.is_set():
                    message = self._cancel_message(f"cancelled before the {stage.label} stage")
                    self.update(status=CANCELLED, message=message)
                    return
                self.update(stage=stage.label, stage_index=i, phase="starting", step=0, total_steps=0,
                            samples_per_second=None, eta_s=None)
                result = stage.fn(stage.cfg, callbacks=[ProgressCallback(self)])
                out = {"stage": stage.label, "status": result.status, "message": result.message,
                       "output_dir": str(result.output_dir) if result.output_dir else None, "metrics": result.metrics}
                with self._lock:
                    self._results.append(out)
                if result.status != DONE:
                    self.update(status=CANCELLED, phase="finished", eta_s=None,
                                message=self._cancel_message(result.message))
                    return
            self.update(status=DONE, phase="finished", eta_s=None,
                        message="; ".join(r["message"] for r in self._results))
        except Exception as e:  # the app keeps serving: the job reports why it failed
            self.traceback = redact(traceback.format_exc())
            log.error("job %s failed:\n%s", self.id, self.traceback)
            why = redact(f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError)) else str(e))
            if "out of memory" in why.lower():
                why += " (lower the batch size or max_length, or use a smaller model)"
            self.update(status=FAILED, phase="finished", eta_s=None, error=why[:1000], message=why[:1000])
        finally:
            self._done.set()
            if self._on_finish:
                self._on_finish(self)

    def _cancel_message(self, detail: str) -> str:
        saved = [r["output_dir"] for r in self._results if r["status"] == DONE]
        kept = f" Finished before the cancel: {', '.join(saved)}." if saved else ""
        return detail.rstrip(".") + "." + kept


class ProgressCallback(TrainerCallback):
    """Feeds a Job: log dicts, step / total, samples per second and ETA; stops training once cancel is requested."""

    def __init__(self, job: Job):
        self.job = job
        self._t0 = None
        self._step0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._step0 = time.perf_counter(), state.global_step  # global_step > 0 when resuming
        self.job.update(phase="training", step=state.global_step, total_steps=state.max_steps)
        if self.job.cancel_requested:  # cancelled while the data was loading: stop after the first step
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        done = state.global_step - self._step0
        seconds = time.perf_counter() - self._t0 if self._t0 else 0.0
        batch = args.train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
        rate = done / seconds if seconds > 0 and done > 0 else None  # optimizer steps per second
        self.job.update(step=state.global_step, total_steps=state.max_steps, phase="training",
                        samples_per_second=round(rate * batch, 2) if rate else None,
                        eta_s=round((state.max_steps - state.global_step) / rate, 1) if rate else None)
        if self.job.cancel_requested:
            control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        self.job.update(phase="training")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.job.record(state.global_step, state.max_steps, logs or {})

    def on_train_end(self, args, state, control, **kwargs):
        if not self.job.cancel_requested:
            self.job.update(phase="evaluating and saving", eta_s=None)


class JobBusy(RuntimeError):
    """A training job is already running; `.snapshot` says which."""

    def __init__(self, snapshot: JobSnapshot):
        self.snapshot = snapshot
        super().__init__(f"A training job is already running: {snapshot.title} ({snapshot.stage}, step "
                         f"{snapshot.step}/{snapshot.total_steps or '?'}). Wait for it or cancel it first.")


@dataclass
class JobRegistry:
    """Every job of this process by id (the newest `keep`), and the one slot for a running training job."""
    keep: int = 20
    _jobs: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    generation: int = 0  # bumped when a job ends: the UI refreshes its checkpoint pickers when this changes

    def start(self, title: str, kind: str, stages: list[Stage], estimate_s: float | None = None) -> Job:
        """Start a job now, or raise JobBusy while another one runs."""
        with self._lock:
            busy = self._active_locked()
            if busy is not None:
                raise JobBusy(busy.snapshot())
            job = Job(str(next(self._ids)), title, kind, stages, estimate_s, on_finish=self._finished)
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)
            return job.start()

    def _finished(self, job: Job) -> None:
        with self._lock:
            self.generation += 1

    def _active_locked(self) -> Job | None:
        return next((j for j in reversed(self._jobs.values()) if j.running()), None)

    def active(self) -> Job | None:
        with self._lock:
            return self._active_locked()

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(str(job_id)) if job_id else None

    def latest(self, kind: str | None = None) -> Job | None:
        with self._lock:
            return next((j for j in reversed(self._jobs.values()) if kind in (None, j.kind)), None)

    def snapshot(self, job_id: str | None) -> JobSnapshot | None:
        job = self.get(job_id)
        return job.snapshot() if job else None

    def cancel(self, job_id: str | None = None) -> bool:
        """Cancel job `job_id` (default: the running one); False when there is nothing to cancel."""
        job = self.get(job_id) if job_id else self.active()
        if job is None or not job.running():
            return False
        job.cancel()
        return True
