"""The app: handlers called directly with tiny models, then the same app over gradio_client on 127.0.0.1."""
import json
import threading
import time

import pytest

from app_fixtures import handler, launch, teacher_form
from kdapp import RunConfig, plots
from kdapp.jobs import JobRegistry, Stage
from kdapp.train import RunResult
from kdapp.ui import build_app
from kdapp.ui.job_panel import describe
from kdapp.ui.results_tab import results_table
from kdapp.ui.train_tab import quick_preset

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # gr.Warning outside a request is a UserWarning


@pytest.fixture(scope="module")
def demo(runs):
    return build_app(JobRegistry(), runs[0])


# ---------------------------------------------------------------- handlers
def test_compare_shows_both_predictions_latency_and_agreement(demo, runs):
    _, paths = runs
    compare = handler(demo, "compare")
    t, s, info = compare("the movie was great and the acting superb", str(paths["teacher"]), str(paths["kd"]))
    assert set(t) == set(s) == {"NEGATIVE", "POSITIVE"} and abs(sum(t.values()) - 1) < 1e-5
    assert info.count(" ms") == 2 and ("agree" in info)
    cache = demo.kdapp_context.models
    first = cache.get(str(paths["teacher"])).model
    compare("awful", str(paths["teacher"]), str(paths["kd"]))
    assert cache.get(str(paths["teacher"])).model is first  # the LRU kept it loaded


def test_compare_reads_the_whole_review_when_asked(demo, runs):
    _, paths = runs
    compare = handler(demo, "compare")
    text = "great " * 3 + "the plot was " * 40 + "awful " * 3  # far past the tiny runs' max_length
    _, _, as_trained = compare(text, str(paths["teacher"]), str(paths["kd"]))
    _, _, whole = compare(text, str(paths["teacher"]), str(paths["kd"]), True)
    assert "windows of" not in as_trained and "batch 1" in as_trained
    assert whole.count("windows of") == 2 and "its windows batched" in whole
    _, _, short = compare("great", str(paths["teacher"]), str(paths["kd"]), True)
    assert "windows of" not in short  # a review that fits is read once


def test_compare_messages_instead_of_errors(demo, runs):
    _, paths = runs
    compare = handler(demo, "compare")
    assert "Type or paste a review" in compare("  ", str(paths["teacher"]), str(paths["kd"]))[2]
    start = time.time()
    _, _, info = compare("good", "bert-base-uncased", str(paths["kd"]))  # HF_HUB_OFFLINE=1: the hub is unreachable
    assert "unreachable" in info and str(paths["teacher"]) in info  # names the local choices
    assert time.time() - start < 30  # no 23 s retry loop
    assert "not found" in compare("good", "/no/such/folder", "")[2]


def test_start_teacher_rejects_bad_settings_with_the_config_message(demo, teacher_dir, reviews_parquet):
    start = handler(demo, "start_teacher")
    job_id, status, timer = start(**teacher_form(teacher_dir, reviews_parquet, learning_rate=0))
    assert status == "Not started: learning_rate must be > 0, got 0.0"
    _, status, _ = start(**teacher_form(teacher_dir, "imdb"))  # offline: the hub dataset is out of reach
    assert status.startswith("Not started") and "unreachable" in status and ".parquet" in status


def test_second_start_says_a_job_is_running(runs, teacher_dir, reviews_parquet):
    registry = JobRegistry()
    demo = build_app(registry, runs[0])
    release = threading.Event()
    busy = registry.start("teacher busy-run", "teacher", [Stage("teacher", lambda cfg, callbacks: (
        release.wait(20), RunResult("done", None, {}, "ok"))[1], None)])
    try:
        job_id, status, timer = handler(demo, "start_teacher")(**teacher_form(teacher_dir, reviews_parquet))
        assert "already running: teacher busy-run" in status and "'Train teacher' tab" in status
        assert job_id == busy.id and timer.active  # this tab now watches the running job
        _, status, _ = handler(demo, "start_distill")(*distill_args(runs[1]["teacher"], reviews_parquet))
        assert "already running" in status
    finally:
        release.set()
        busy.wait(10)


def distill_args(teacher, data, also_nokd=True):
    return [str(teacher), "made from the teacher (every other layer)", "", 2, str(data), 0, 16, 1, 1e-3, 8, 16, 0,
            0.5, 2.0, also_nokd, False, "head", "none", 0, "none", 1.0, False, 0, 0, 3, 1, "no", 42, 1, ""]


def test_distill_job_trains_kd_and_nokd_students(runs, reviews_parquet, tmp_path):
    registry = JobRegistry()
    demo = build_app(registry, tmp_path)
    job_id, status, timer = handler(demo, "start_distill")(*distill_args(runs[1]["teacher"], reviews_parquet))
    assert "Estimated duration" in status and timer.active, status
    job = registry.get(job_id)
    assert job.wait(180)
    snap = job.snapshot()
    assert snap.status == "done", snap.status_line
    assert [r["stage"] for r in snap.results] == ["KD student", "no-KD student"]
    assert describe(snap).startswith("done")
    kinds = sorted(r.kind for r in demo.kdapp_context.runs())
    assert kinds == ["kd", "nokd"]
    names = {t.name for t in plots.loss_curve(list(snap.history)).data}
    assert {"KD student: train loss", "KD student: CE part", "KD student: KD part", "no-KD student: train loss"} <= names
    assert "no-KD student: KD part" not in names  # always 0 for alpha = 1


def test_results_table_plots_and_disagreements(demo, runs):
    root, paths = runs
    markdown, empty, run, teacher, student, sweep = handler(demo, "results")(None, None, None)
    table = results_table(demo.kdapp_context.runs())
    assert list(table["role"]) == ["teacher", "KD student", "no-KD student"]
    assert table["Δ acc (pp)"][0] == "" and table["Δ acc (pp)"][1] != "" and table["alpha / T"][1] == "0.5 / 2.0"
    assert table["Δ params"][1] == "-50 %"
    assert markdown.count("\n") == 4 and "| student-tiny-kd | KD student |" in markdown
    assert not empty["visible"] and teacher["value"] == str(paths["teacher"]) and student["value"] == str(paths["kd"])
    summary, examples = handler(demo, "disagreements")(str(paths["teacher"]), str(paths["kd"]), 50)
    assert "validation reviews" in summary and "disagree on" in summary, summary
    assert list(examples.columns) == ["review", "true", "teacher", "student"]


def test_empty_checkpoints_folder_says_what_to_do(tmp_path):
    demo = build_app(JobRegistry(), tmp_path / "none-yet")
    table, empty, *_ = handler(demo, "results")(None, None, None)
    assert empty["visible"] and "Train a teacher" in empty["value"] and table == ""
    t, s, info = handler(demo, "compare")("great", None, None)
    assert "No trained checkpoints" in info and "Quick CPU run" in info


def test_quick_preset_is_small():
    p = quick_preset()
    assert p["model"] == "minilm" and p["max_train_samples"] <= 500 and p["max_length"] == 128
    assert p["num_train_epochs"] == 1 and p["learning_rate"] == 1e-4 and p["warmup_steps"] == 0.1


def preset_outputs(demo, api_name) -> tuple[tuple, dict]:
    """A preset button's values, and {elem_id: value} of the controls they fill (one value per output)."""
    event = next(f for f in demo.fns.values() if f.api_name == api_name)
    values = event.fn()
    assert len(values) == len(event.outputs)
    return values, {block.elem_id: v for block, v in zip(event.outputs, values) if block.elem_id}


def test_teacher_gpu_preset_fills_each_of_its_outputs(demo):
    """The preset resets the augmentation too: each value lands in its own control (no augmentation at 512 tokens)."""
    _, filled = preset_outputs(demo, "gpu_preset")
    assert filled["train_model"] == "bert-base-uncased" and filled["train_max_length"] == 512
    assert filled["train_augment"] == 0 and filled["train_augment_masked"] == 0
    assert (filled["train_max_steps"], filled["train_holdout_fold"], filled["train_mixed_precision"]) == (0, "", "auto")


def test_teacher_quick_preset_fills_each_of_its_outputs(demo, monkeypatch):
    import kdapp.ui.train_tab as train_tab

    class Estimate:  # the preset's run-time estimate needs the real data and model; its text is all the form shows
        def describe(self):
            return "Estimated: a few minutes."

    monkeypatch.setattr(train_tab, "estimate_run", lambda cfg: Estimate())
    values, filled = preset_outputs(demo, "quick_preset")
    assert filled["train_model"] == "minilm" and filled["train_max_length"] == 128
    assert filled["train_augment"] == 0 and filled["train_augment_masked"] == 0
    assert values[-1].startswith("Quick CPU run preset filled") and values[-1].endswith("a few minutes.")
    assert (filled["train_max_steps"], filled["train_holdout_fold"], filled["train_mixed_precision"]) == (0, "", "auto")


def test_teacher_quick_preset_without_an_estimate_still_answers_every_output(demo, monkeypatch):
    import kdapp.ui.train_tab as train_tab

    def no_estimate(cfg):
        raise ValueError("no model here")

    monkeypatch.setattr(train_tab, "estimate_run", no_estimate)
    values, filled = preset_outputs(demo, "quick_preset")  # one value per output, or Gradio refuses the answer
    assert values[-1] == "Preset filled; no estimate: no model here"
    assert filled["train_model"] == "minilm" and filled["train_max_length"] == 128  # filled all the same


def test_benchmark_handler(demo, runs):
    table, chart = handler(demo, "benchmark")([str(runs[1]["kd"])], [1, 2], 16, "cpu", ["fp32"], "random tokens", 4, 1)
    assert "Latency, batch 1" in table and "Throughput, batch 2" in table
    assert {t.type for t in chart.data} == {"bar"}
    table, _ = handler(demo, "benchmark")([str(runs[1]["kd"])], [1], 128, "cpu", ["fp32"], "random tokens", 4, 1)
    assert "beyond student-tiny-kd's limit of 64 tokens" in table


def test_benchmark_says_when_a_training_job_shared_the_machine(runs, monkeypatch):
    """A job in this app's process is not an 'other process' to the CPU reading, so the tab says so itself: a job
    running when the benchmark starts, and one that starts and ends while it times."""
    import kdapp.ui.bench_tab as bench_tab

    registry, release = JobRegistry(), threading.Event()
    demo = build_app(registry, runs[0])
    bench = handler(demo, "benchmark")
    args = ([str(runs[1]["kd"])], [1], 16, "cpu", ["fp32"], "random tokens", 4, 1)

    def blocking(cfg, callbacks):
        release.wait(30)
        return RunResult("done", None, {}, "ok")

    job = registry.start("teacher tiny", "teacher", [Stage("teacher", blocking, None)])
    try:
        table, _ = bench(*args)
        assert table.startswith("**A training job ran in this app while timing** (teacher tiny): it shares the machine")
        assert "| Metric |" in table
    finally:
        release.set()
        assert job.wait(30)
    table, _ = bench(*args)
    assert table.startswith("| Metric |")  # nothing trains now

    real = bench_tab.run_benchmark

    def a_job_comes_and_goes(*a, **kw):
        assert registry.start("quick", "teacher", [Stage("teacher", lambda cfg, cb: RunResult("done", None, {}, ""),
                                                         None)]).wait(30)
        return real(*a, **kw)

    monkeypatch.setattr(bench_tab, "run_benchmark", a_job_comes_and_goes)
    table, _ = bench(*args)
    assert table.startswith("**A training job ran in this app while timing**: it shares the machine")


# ---------------------------------------------------------------- over HTTP with gradio_client
@pytest.fixture(scope="module")
def client(demo):
    from gradio_client import Client

    url = launch(demo)
    yield Client(url, verbose=False)
    demo.close()


def poll(client, job_id, until, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        snap = client.predict(job_id, api_name="/job_status")
        if until(snap):
            return snap
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not reach the state in {timeout} s: {snap}")


def test_client_compare(client, runs):
    _, paths = runs
    t, s, info = client.predict("a wonderful film", str(paths["teacher"]), str(paths["nokd"]), api_name="/compare")
    assert t["label"] in ("POSITIVE", "NEGATIVE") and len(t["confidences"]) == 2
    assert s["label"] in ("POSITIVE", "NEGATIVE") and "ms" in info


def test_client_trains_then_cancels(client, runs, teacher_dir, reviews_parquet):
    job_id, status, _ = client.predict(**teacher_form(teacher_dir, reviews_parquet), api_name="/start_teacher")
    assert job_id and "Estimated duration" in status
    snap = poll(client, job_id, lambda s: s["status"] != "running")
    assert snap["status"] == "done", snap["status_line"]
    assert snap["step"] == 4 and [h["loss"] for h in snap["history"] if "loss" in h]

    job_id, _, _ = client.predict(**teacher_form(teacher_dir, reviews_parquet, max_steps=5000),
                                  api_name="/start_teacher")
    poll(client, job_id, lambda s: s["step"] >= 2)
    t, s, info = client.predict("a dull film", str(runs[1]["teacher"]), str(runs[1]["kd"]), api_name="/compare")
    assert "ms" in info  # predictions are served while the job trains
    assert client.predict(job_id, api_name="/job_status")["status"] == "running"
    assert "Cancel requested" in client.predict(job_id, api_name="/cancel_train")
    snap = poll(client, job_id, lambda s: s["status"] != "running", timeout=60)
    assert snap["status"] == "cancelled" and snap["step"] < 5000 and "cancelled at step" in snap["message"]


def test_client_benchmark(client, runs):
    table, chart = client.predict([str(runs[1]["teacher"])], [1], 16, "cpu", ["fp32"], "random tokens", 2, 1,
                                  api_name="/benchmark")
    assert "Latency, batch 1" in table
    assert json.loads(chart["plot"])["data"][0]["type"] == "bar"


def preset_config(preset: dict) -> dict:
    """A preset's form values as RunConfig takes them (as start_distill reads the form: 0 reviews is all, an empty
    folder list none, 0 max steps the epochs); the CPU preset's data box (gr.skip) left out."""
    from kdapp.config import FROM_TEACHER
    from kdapp.ui.distill_tab import FROM_TEACHER_LABEL

    values = {k: v for k, v in preset.items() if v is None or isinstance(v, (str, int, float, bool))}
    for key in ("transfer_samples", "max_train_samples", "fold_teachers", "transfer_teachers", "student_layers"):
        if key in values:
            values[key] = values[key] or None
    values["max_steps"] = values["max_steps"] or -1
    if values.pop("student_source") == FROM_TEACHER_LABEL:
        values["student"] = FROM_TEACHER
    return values


@pytest.mark.parametrize("scale", ["cpu", "gpu"])
def test_recipe_presets_fill_every_field_and_make_a_valid_config(scale):
    from kdapp.ui.distill_tab import PRESET_FIELDS, recipe_preset

    preset = recipe_preset(scale)
    assert set(preset) == set(PRESET_FIELDS)  # every control the buttons write has a value
    cfg = RunConfig(kind="distill", teacher="t", **preset_config(preset))
    assert cfg.alpha < 1 and cfg.cache_teacher_logits and cfg.transfer_data
    assert (cfg.freeze_layers, cfg.mixup_alpha, cfg.fold_teachers, cfg.max_steps) == (0, 0.0, None, -1)
    assert cfg.student == ("from-teacher" if scale == "cpu" else "distilbert-base-uncased")  # README's GPU command
    if scale == "cpu":  # kd-transfer-masked-windows of benchmarks/accuracy.py (2,000 transfer reviews)
        assert (cfg.augment_masked, cfg.augment_windows, cfg.transfer_samples) == (1, 2, 2000)
        assert cfg.attention_dropout is None and cfg.hidden_dropout is None


def test_cpu_recipe_preset_is_the_measured_recipe():
    """The button's recipe is the run benchmarks/accuracy.py measured, field for field (the data box excepted): a
    setting the preset leaves to the form (weight decay, once; an option set before the click) would make another
    recipe than the figures'."""
    import importlib.util
    from pathlib import Path

    from kdapp.ui.distill_tab import PRESET_FIELDS, recipe_preset

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("kdapp_accuracy_benchmark", path)
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    measured = accuracy.runs()["kd-transfer-masked-windows-fastdrop"][1]
    preset = preset_config(recipe_preset("cpu"))
    differ = {k: (preset[k], getattr(measured, k)) for k in PRESET_FIELDS
              if k not in ("data", "student_source", "student_layers") and preset[k] != getattr(measured, k)}
    assert preset["student_layers"] is None and measured.student_layers == 3  # half the MiniLM teacher's six
    assert differ == {}
    assert preset["weight_decay"] == measured.weight_decay == 0.01


def test_benchmark_tab_offers_the_gpu_precisions_on_a_gpu(runs, monkeypatch):
    """On a GPU machine the tab offers cuda (the default), fp16 and int4 (bitsandbytes), and the button hands them to
    run_benchmark as chosen; the GPU itself is faked, the kernels were timed on an H200 (docs/speed.md)."""
    import torch

    import kdapp.ui.bench_tab as bench_tab

    def components(demo):
        return {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}

    cpu_only = components(build_app(JobRegistry(), runs[0]))
    assert [v for _, v in cpu_only["bench_device"].choices] == ["cpu"]
    assert {"fp16", "int4"}.isdisjoint(v for _, v in cpu_only["bench_precision"].choices)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    demo = build_app(JobRegistry(), runs[0])
    on_gpu = components(demo)
    assert [v for _, v in on_gpu["bench_device"].choices] == ["cpu", "cuda"] and on_gpu["bench_device"].value == "cuda"
    assert [v for _, v in on_gpu["bench_precision"].choices] == ["fp32", "bf16", "int8", "fp16", "int4"]

    calls = []

    def record(models, batch_sizes, max_length, device, precisions, **kw):
        calls.append((models, batch_sizes, max_length, device, precisions))
        raise RuntimeError("recorded")

    monkeypatch.setattr(bench_tab, "run_benchmark", record)
    kd = str(runs[1]["kd"])
    table, _ = handler(demo, "benchmark")([kd], [1, 100], 32, "cuda", ["fp16", "int4"], "random tokens", 4, 1)
    assert calls == [([kd], [1, 100], 32, "cuda", ("fp16", "int4"))] and "recorded" in table
