"""Background jobs: progress snapshots, cancel within one optimizer step, failures, one job at a time."""
import dataclasses
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from kdapp.config import RunConfig
from kdapp.data import DataError
from kdapp.encoding import window_views
from kdapp.estimate import estimate_run, format_duration, transfer_stats, windows_per_review
from kdapp.jobs import JobBusy, JobRegistry, ProgressCallback, Stage
from kdapp.train import RunResult, train_teacher


def tiny_cfg(teacher_dir, reviews_parquet, out, **kw) -> RunConfig:
    values = dict(kind="teacher", model=str(teacher_dir), data=str(reviews_parquet), max_length=16, max_steps=4,
                  per_device_train_batch_size=8, per_device_eval_batch_size=32, logging_steps=1, eval_strategy="no",
                  max_eval_samples=16, save_steps=1000, output_dir=str(out), learning_rate=1e-3)
    return RunConfig(**(values | kw))


def fake_stage(label="fake", fn=None):
    return Stage(label, fn or (lambda cfg, callbacks: RunResult("done", None, {}, f"{label} ok")), cfg=None)


def wait_until(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_job_trains_and_records_progress(teacher_dir, reviews_parquet, tmp_path):
    registry = JobRegistry()
    cfg = tiny_cfg(teacher_dir, reviews_parquet, tmp_path / "teacher")
    job = registry.start("teacher tiny", "teacher", [Stage("teacher", train_teacher, cfg)], estimate_s=12.0)
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "done", snap.status_line
    assert (snap.step, snap.total_steps) == (4, 4)
    losses = [h for h in snap.history if "loss" in h]
    assert len(losses) == 4 and all(h["stage"] == "teacher" for h in losses)
    assert snap.samples_per_second and snap.samples_per_second > 0
    assert snap.results[0]["output_dir"] == str(tmp_path / "teacher") and (tmp_path / "teacher" / "metrics.json").is_file()
    assert snap.estimate_s == 12.0
    assert registry.active() is None and registry.generation == 1
    with pytest.raises(AttributeError):  # snapshots are frozen copies
        snap.status = "running"


def test_cancel_stops_within_one_optimizer_step(teacher_dir, reviews_parquet, tmp_path):
    registry = JobRegistry()
    cfg = tiny_cfg(teacher_dir, reviews_parquet, tmp_path / "long", max_steps=5000)
    job = registry.start("long", "teacher", [Stage("teacher", train_teacher, cfg)])
    assert wait_until(lambda: job.snapshot().step >= 2)
    assert registry.cancel()  # default: the running job
    step_at_cancel = job.snapshot().step
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.status == "cancelled"
    assert step_at_cancel <= snap.step <= step_at_cancel + 1  # at most the step that was under way
    assert "cancelled at step" in snap.message and "nothing was saved" in snap.message
    assert not (tmp_path / "long").exists()
    assert not registry.cancel()  # nothing left to cancel


def test_failing_job_says_why_and_frees_the_slot():
    registry = JobRegistry()

    def boom(cfg, callbacks):
        raise ValueError("data file has no rows")

    job = registry.start("bad", "teacher", [fake_stage("teacher", boom)])
    assert job.wait(10)
    snap = job.snapshot()
    assert snap.status == "failed" and snap.status_line == "failed: data file has no rows"
    assert "ValueError" in job.traceback
    assert registry.active() is None
    assert registry.start("next", "teacher", [fake_stage()]).wait(10)  # the slot is free again


def test_one_training_job_at_a_time():
    registry = JobRegistry()
    release = threading.Event()

    def blocking(cfg, callbacks):
        release.wait(10)
        return RunResult("done", None, {}, "ok")

    first = registry.start("first", "teacher", [fake_stage("teacher", blocking)])
    with pytest.raises(JobBusy, match="already running: first"):
        registry.start("second", "distill", [fake_stage()])
    assert registry.active() is first
    release.set()
    assert first.wait(10) and first.snapshot().status == "done"
    assert registry.start("second", "distill", [fake_stage()]).wait(10)
    assert registry.latest("distill").title == "second" and registry.latest("teacher") is first


def test_stages_run_in_order_and_cancel_between_them():
    registry = JobRegistry()
    seen, gate = [], threading.Event()

    def first(cfg, callbacks):
        seen.append("kd")
        gate.wait(10)
        return RunResult("done", "/runs/kd", {}, "saved /runs/kd")

    def second(cfg, callbacks):
        seen.append("nokd")
        return RunResult("done", "/runs/nokd", {}, "saved /runs/nokd")

    job = registry.start("two", "distill", [fake_stage("KD student", first), fake_stage("no-KD student", second)])
    assert wait_until(lambda: seen == ["kd"])
    job.cancel()
    gate.set()
    assert job.wait(10)
    snap = job.snapshot()
    assert seen == ["kd"] and snap.status == "cancelled"
    assert "before the no-KD student stage" in snap.message and "/runs/kd" in snap.message
    assert snap.n_stages == 2 and len(snap.results) == 1


def test_progress_callback_rates_and_stop_flag():
    registry = JobRegistry()
    release = threading.Event()
    job = registry.start("cb", "teacher", [fake_stage("teacher", lambda cfg, callbacks: (release.wait(10), RunResult(
        "done", None, {}, "ok"))[1])])
    cb = ProgressCallback(job)
    args = SimpleNamespace(train_batch_size=8, gradient_accumulation_steps=1, world_size=1)
    state = SimpleNamespace(global_step=0, max_steps=10)
    control = SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(args, state, control)
    time.sleep(0.05)
    state.global_step = 2
    cb.on_step_end(args, state, control)
    cb.on_log(args, state, control, logs={"loss": 0.7, "learning_rate": 1e-4})
    snap = job.snapshot()
    assert (snap.step, snap.total_steps, snap.phase) == (2, 10, "training")
    assert snap.samples_per_second > 0 and snap.eta_s > 0
    assert snap.history[-1] == {"loss": 0.7, "learning_rate": 1e-4, "step": 2, "stage": "teacher"}
    assert not control.should_training_stop
    job.cancel()
    cb.on_step_end(args, state, control)
    assert control.should_training_stop
    release.set()
    assert job.wait(10)


def test_estimate_before_start(teacher_dir, reviews_parquet, tmp_path):
    cfg = tiny_cfg(teacher_dir, reviews_parquet, tmp_path / "x", max_steps=-1, num_train_epochs=2.0)
    est = estimate_run(cfg)
    assert est.train_rows == 216 and est.steps == 54  # 240 rows -> 90 % train; 27 batches of 8 per epoch
    assert 0 < est.seconds < 3600 and not est.long_on_cpu
    assert "Estimated duration" in est.describe() and "estimate" in est.describe()
    assert format_duration(30) == "30 s" and format_duration(600) == "10 min" and format_duration(36000) == "10.0 h"


def test_estimate_counts_on_the_fly_views_and_masked_copies(teacher_dir, reviews_parquet):
    base = RunConfig(kind="distill", teacher=str(teacher_dir), student="from-teacher", data=str(reviews_parquet),
                     max_length=16, num_train_epochs=1.0, per_device_train_batch_size=8, eval_strategy="no",
                     cache_teacher_logits=True)
    plain = estimate_run(base).seconds
    assert estimate_run(dataclasses.replace(base, mixup_alpha=0.4)).seconds > plain  # a student step + a teacher pass
    assert estimate_run(dataclasses.replace(base, mixup_alpha=0.4, online_mask_prob=0.15)).seconds > \
        estimate_run(dataclasses.replace(base, mixup_alpha=0.4)).seconds
    copies = estimate_run(dataclasses.replace(base, augment_masked=1))
    assert copies.steps == 2 * estimate_run(base).steps and copies.seconds > plain  # twice the rows per epoch
    crossfit = estimate_run(dataclasses.replace(base, fold_teachers="f0,f1"))  # the fold teachers' labelling pass
    assert crossfit.steps == estimate_run(base).steps and crossfit.seconds > plain
    views = dict(fold_teachers="f0,f1", augment_masked=1)  # the fold teachers label the masked copies too
    assert estimate_run(dataclasses.replace(base, cross_fit_views=True, **views)).seconds > \
        estimate_run(dataclasses.replace(base, **views)).seconds
    transfer = dict(transfer_data="rest", transfer_samples=8, max_train_samples=16)  # the ensemble labels these
    assert estimate_run(dataclasses.replace(base, transfer_teachers="e0,e1", **transfer)).seconds > \
        estimate_run(dataclasses.replace(base, **transfer)).seconds


def test_estimate_counts_the_windows_that_window_augmentation_adds(tokenizer, teacher_dir, reviews_parquet):
    lengths = (10, 14, 15, 17, 30, 100)  # tokens; at max_length 16 a window holds 14, none shorter than 3 is kept
    texts = [" ".join(["good"] * n) for n in lengths]  # one token per word
    for per_review in (1, 2, 5):
        views, _ = window_views(tokenizer, texts, 16, per_review)
        assert windows_per_review(lengths, 16, per_review) == pytest.approx(len(views) / len(lengths))
    assert windows_per_review(lengths, 16, 2) == pytest.approx(4 / 6) and windows_per_review((), 16, 2) == 0
    base = RunConfig(kind="distill", teacher=str(teacher_dir), student="from-teacher", data=str(reviews_parquet),
                     max_length=16, num_train_epochs=1.0, per_device_train_batch_size=8, eval_strategy="no",
                     cache_teacher_logits=True, max_train_samples=100, transfer_data="rest", transfer_samples=100)
    plain, windows = estimate_run(base), estimate_run(dataclasses.replace(base, augment_windows=2))
    both = estimate_run(dataclasses.replace(base, augment_windows=2, transfer_windows=2))
    assert plain.steps < windows.steps < both.steps and plain.seconds < windows.seconds < both.seconds
    teacher = RunConfig(kind="teacher", model=str(teacher_dir), data=str(reviews_parquet), max_length=16,
                        num_train_epochs=1.0, per_device_train_batch_size=8, eval_strategy="no", max_train_samples=96)
    plain, windows = estimate_run(teacher), estimate_run(dataclasses.replace(teacher, augment_windows=2))
    both = estimate_run(dataclasses.replace(teacher, augment_windows=2, augment_masked=1))
    assert plain.steps == 12 < windows.steps and both.steps == windows.steps + 12  # a teacher's windows and copies


def test_estimate_counts_a_transfer_file(teacher_dir, reviews_parquet, tmp_path):
    reviews = tmp_path / "unlabelled.txt"
    reviews.write_text("\n".join(f"a review of some film, number {i}" for i in range(40)) + "\n\n")
    base = RunConfig(kind="distill", teacher=str(teacher_dir), student="from-teacher", data=str(reviews_parquet),
                     max_length=16, num_train_epochs=1.0, per_device_train_batch_size=8, eval_strategy="no",
                     cache_teacher_logits=True, max_train_samples=80)
    plain = estimate_run(base)
    assert plain.steps == 10
    assert estimate_run(dataclasses.replace(base, transfer_data=str(reviews))).steps == 15  # 80 + 40 rows
    assert estimate_run(dataclasses.replace(base, transfer_data=str(reviews), transfer_samples=8)).steps == 11
    assert estimate_run(dataclasses.replace(base, transfer_data="rest", transfer_samples=24)).steps == 13
    with pytest.raises(DataError, match="not found"):
        estimate_run(dataclasses.replace(base, transfer_data=str(tmp_path / "missing.txt")))
    with pytest.raises(DataError, match="no unsupervised split"):  # a file of labelled reviews has none
        estimate_run(dataclasses.replace(base, transfer_data="unsupervised"))
    with pytest.raises(DataError, match="unreachable"):  # the tests run offline
        estimate_run(dataclasses.replace(base, transfer_data="imdb:unsupervised"))
    hub_unsup = dataclasses.replace(base, data="imdb", transfer_data="unsupervised")  # the hub's IMDb has the split
    with pytest.raises(DataError, match="unreachable"):
        transfer_stats(hub_unsup, 25_000, 80, ())


@pytest.mark.parametrize("changes, timed_cls_only", [({}, True), ({"cls_only": False}, False),
                                                     ({"hidden_loss": "cosine"}, False)])
def test_estimate_times_the_last_layer_as_the_run_will(teacher_dir, reviews_parquet, monkeypatch, changes,
                                                       timed_cls_only):
    import kdapp.estimate as est

    switched = []
    monkeypatch.setattr(est, "_COSTS", {})
    monkeypatch.setattr(est, "use_cls_only", lambda model: switched.append(model) or True)
    cfg = RunConfig(kind="distill", teacher=str(teacher_dir), student="from-teacher", data=str(reviews_parquet),
                    max_length=16, num_train_epochs=1.0, per_device_train_batch_size=8, eval_strategy="no", **changes)
    estimate_run(cfg)
    assert len(switched) == (2 if timed_cls_only else 0)  # the student's and the teacher's timed steps


@pytest.mark.parametrize("changes, student_amp, teacher_amp", [
    ({}, None, None), ({"mixed_precision": "bf16"}, torch.bfloat16, torch.bfloat16),
    ({"mixed_precision": "bf16", "teacher_precision": "fp32"}, torch.bfloat16, None)])
def test_estimate_times_the_precision_the_run_trains_in(teacher_dir, reviews_parquet, monkeypatch, changes,
                                                        student_amp, teacher_amp):
    import kdapp.estimate as est

    monkeypatch.setattr(est, "_COSTS", {})
    timed = []
    real = est.measure_step_cost
    monkeypatch.setattr(est, "measure_step_cost", lambda *a, **kw: timed.append(a[5]) or real(*a, **kw))
    cfg = RunConfig(kind="distill", teacher=str(teacher_dir), student="from-teacher", data=str(reviews_parquet),
                    max_length=16, num_train_epochs=1.0, per_device_train_batch_size=8, eval_strategy="no", **changes)
    estimate_run(cfg)
    assert timed == [student_amp, teacher_amp]
    if student_amp is not None:  # and the timed passes did run in it
        dtypes, real_model = set(), est._random_model

        def recorded(config):
            model = real_model(config)
            linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
            linear.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
            return model

        monkeypatch.setattr(est, "_COSTS", {})
        monkeypatch.setattr(est, "_random_model", recorded)
        real(est.model_config(str(teacher_dir)), 16, "cpu", 1, True, student_amp)
        assert dtypes == {student_amp}
