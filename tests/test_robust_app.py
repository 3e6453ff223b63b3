"""Robustness and public-Space safety of the app: one test per bad input of issue 5 through the handlers (the message,
then the next good request answered), the admin-password lock, server paths, uploads, secrets, resume; then a few of
them again over gradio_client against the app on 127.0.0.1."""
import shutil
import urllib.request

import pytest
import torch
from transformers import BertTokenizerFast, TrainerCallback

from app_fixtures import handler, launch, teacher_form
from conftest import VOCAB, make_reviews, tiny_distilbert
from kdapp.checkpoints import list_incomplete
from kdapp.config import RunConfig
from kdapp.jobs import JobRegistry
from kdapp.train import train_teacher
from kdapp.ui import build_app
from kdapp.ui.job_panel import describe
from kdapp.ui.train_tab import incomplete_choices

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # gr.Warning outside a request is a UserWarning
PASSWORD = "correct horse battery staple"
FROM_TEACHER_LABEL = "made from the teacher (every other layer)"


@pytest.fixture(scope="module")
def demo(runs):
    with pytest.MonkeyPatch.context() as mp:  # the app reads KDAPP_ADMIN_PASSWORD when it is built
        mp.delenv("KDAPP_ADMIN_PASSWORD", raising=False)
        return build_app(JobRegistry(), runs[0])


@pytest.fixture(scope="module")
def locked(runs):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KDAPP_ADMIN_PASSWORD", PASSWORD)
        return build_app(JobRegistry(), runs[0])


def compare(demo, text, teacher, student=None):
    return handler(demo, "compare")(text, str(teacher) if teacher else None, str(student) if student else None)


def answers_next_good_request(demo, runs):
    t, s, info = compare(demo, "the movie was great", runs[1]["teacher"], runs[1]["kd"])
    assert set(t) == {"NEGATIVE", "POSITIVE"} and set(s) == {"NEGATIVE", "POSITIVE"} and "ms" in info, info


def start_distill(demo, teacher, data, **kw):
    values = dict(teacher=str(teacher), student_source=FROM_TEACHER_LABEL, student="", student_layers=2,
                  data=str(data), max_train_samples=0, max_eval_samples=16, num_train_epochs=1, learning_rate=1e-3,
                  batch_size=8, max_length=16, warmup_steps=0, alpha=0.5, temperature=2.0, also_nokd=False,
                  use_wandb=False, truncation="head", transfer_data="none", transfer_samples=0, hidden_loss="none",
                  hidden_loss_weight=1.0, cache_teacher_logits=False, augment_windows=0, augment_masked=0, max_steps=2,
                  logging_steps=1, eval_strategy="no", seed=42, num_threads=1, run_name="")
    fn = handler(demo, "start_distill")
    names = fn.__wrapped__.__code__.co_varnames[:fn.__wrapped__.__code__.co_argcount]
    return fn(**{k: v for k, v in (values | kw).items() if k in names})  # the form may grow fields


def finished(demo, job_id, timeout=120):
    job = demo.kdapp_context.registry.get(job_id)
    assert job is not None and job.wait(timeout)
    return job.snapshot()


# ---------------------------------------------------------------- reviews
@pytest.mark.parametrize("text", ["", "   \n  "])
def test_empty_or_whitespace_review(demo, runs, text):
    t, s, info = compare(demo, text, runs[1]["teacher"], runs[1]["kd"])
    assert (t, s) == (None, None) and "Type or paste a review first" in info
    answers_next_good_request(demo, runs)


def test_one_megabyte_review_is_capped_with_a_note(demo, runs):
    t, s, info = compare(demo, "the movie was awful " * 52_429, runs[1]["teacher"], runs[1]["kd"])
    assert set(t) == {"NEGATIVE", "POSITIVE"} and "ms" in info
    assert "Note: the review has 1,048,580 characters; only the first 100,000 were read" in info
    answers_next_good_request(demo, runs)


@pytest.mark.parametrize("text", ["great<br /><br />film<br/>", "😀🎬 loved it 👍", "Отличный фильм", "映画は素晴らしい",
                                  "<script>alert(1)</script>"])
def test_html_emoji_and_non_latin_reviews(demo, runs, text):
    t, s, info = compare(demo, text, runs[1]["teacher"], runs[1]["kd"])
    assert abs(sum(t.values()) - 1) < 1e-5 and "agree" in info
    answers_next_good_request(demo, runs)


# ---------------------------------------------------------------- uploads and data files
def test_invalid_utf8_upload(demo, runs, tmp_path, teacher_dir):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncafé crème,1\n".encode("latin-1"))
    _, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, "imdb"), upload=str(bad))
    assert status.startswith("Not started") and "latin1.csv is not valid UTF-8" in status
    answers_next_good_request(demo, runs)


@pytest.mark.parametrize("frame, message", [
    (make_reviews(8).rename(columns={"text": "review"}), "expected a 'text' column"),
    (make_reviews(8).drop(columns=["label"]), "expected a 'label' column"),
    (make_reviews(8).assign(label=[5, 1] * 4), "labels must be 0 (negative) or 1 (positive); found 5"),
    (make_reviews(8).iloc[:0], "has no rows"),
])
def test_bad_data_file_upload(demo, runs, tmp_path, teacher_dir, frame, message):
    path = tmp_path / "upload.parquet"
    frame.to_parquet(path)
    _, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, "imdb"), upload=str(path))
    assert status.startswith("Not started") and message in status, status
    assert demo.kdapp_context.registry.active() is None
    answers_next_good_request(demo, runs)


def test_upload_type_and_size_are_capped(demo, runs, tmp_path, teacher_dir, monkeypatch):
    exe = tmp_path / "run.sh"
    exe.write_text("#!/bin/sh\n")
    _, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, "imdb"), upload=str(exe))
    assert "Upload 'run.sh' refused: expected one of .parquet, .csv" in status
    big = tmp_path / "big.csv"
    big.write_text("text,label\n" + "a fine film,1\n" * 100_000)  # 1.4 MB
    monkeypatch.setenv("KDAPP_MAX_UPLOAD_MB", "1")
    _, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, "imdb"), upload=str(big))
    assert "Upload 'big.csv' is 1.4 MB; the limit is 1 MB (KDAPP_MAX_UPLOAD_MB)" in status
    answers_next_good_request(demo, runs)


def test_a_good_upload_is_trained_on(runs, tmp_path, teacher_dir):
    demo = build_app(JobRegistry(), tmp_path / "ckpt")
    upload = tmp_path / "mine.jsonl"
    make_reviews(64).to_json(upload, orient="records", lines=True)
    job_id, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, "no/such/data.parquet"),
                                                       upload=str(upload))
    snap = finished(demo, job_id)
    assert snap.status == "done", snap.status_line
    (run,) = demo.kdapp_context.runs()
    assert run.run_config["data"] == str(upload)  # the upload replaced the Data field


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("form, message", [
    (dict(learning_rate=0), "learning_rate must be > 0, got 0.0"),
    (dict(learning_rate=-1), "learning_rate must be > 0, got -1.0"),
    (dict(num_train_epochs=0, max_steps=0), "num_train_epochs must be > 0"),
    (dict(batch_size=0), "per_device_train_batch_size must be > 0, got 0"),
    (dict(max_length=2), "max_length must be in [8, 8192], got 2"),
    (dict(max_length=128), "max_length 128 is beyond the model's limit of 64 positions"),
    (dict(attention_dropout=1), "attention_dropout must be in [0, 1), got 1.0"),
    (dict(holdout_fold="2/2"), "holdout_fold must be 'k/K' with K >= 2 and 0 <= k < K (e.g. 0/4), got '2/2'"),
    (dict(augment_masked=-1), "augment_masked must be >= 0, got -1"),
])
def test_bad_teacher_settings(demo, runs, teacher_dir, reviews_parquet, form, message):
    job_id, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, reviews_parquet, **form))
    assert status == f"Not started: {message}" or (status.startswith("Not started") and message in status), status
    assert demo.kdapp_context.registry.active() is None
    answers_next_good_request(demo, runs)


@pytest.mark.parametrize("form, message", [
    (dict(alpha=-0.1), "alpha must be in [0, 1], got -0.1"),
    (dict(alpha=1.2), "alpha must be in [0, 1], got 1.2"),
    (dict(temperature=0), "temperature must be > 0, got 0.0"),
    (dict(temperature=-3), "temperature must be > 0, got -3.0"),
    (dict(attention_dropout=-0.5), "attention_dropout must be in [0, 1), got -0.5"),
    (dict(hidden_dropout=1), "hidden_dropout must be in [0, 1), got 1.0"),
    (dict(mixup_alpha=-1), "mixup_alpha must be >= 0 (0: off), got -1.0"),
    (dict(online_mask_prob=1), "online_mask_prob must be in [0, 1) (0: off), got 1.0"),
    (dict(teacher_max_length=64, cache_teacher_logits=False), "teacher_max_length (a longer input for the teacher "
     "than for the student) needs alpha < 1, cache_teacher_logits and hidden_loss none: the teacher reads its "
     "longer inputs once, for the cache"),
    (dict(fold_teachers="a,b"), "fold_teachers (cross-fitted soft targets) needs alpha < 1, cache_teacher_logits and "
     "hidden_loss none, with the teacher in fp32 (teacher_precision auto or fp32): the fold teachers label the "
     "labelled rows once, for the cache"),
    (dict(transfer_windows=2), "transfer_windows (windows of the transfer reviews) needs transfer_data"),
])
def test_bad_distill_settings(demo, runs, reviews_parquet, form, message):
    _, status, _ = start_distill(demo, runs[1]["teacher"], reviews_parquet, **form)
    assert status == f"Not started: {message}", status
    answers_next_good_request(demo, runs)


def kd_and_nokd_runs(demo, teacher, data, **form):
    """One app job that trains a KD student and its no-KD student: their runs (kd, nokd)."""
    job_id, status, _ = start_distill(demo, teacher, data, also_nokd=True, **form)
    snap = finished(demo, job_id)
    assert snap.status == "done", snap.status_line
    (kd,), (nokd,) = demo.kdapp_context.runs(("kd",)), demo.kdapp_context.runs(("nokd",))
    return kd, nokd


def test_teacher_length_precision_and_views_reach_the_run(runs, tmp_path, reviews_parquet, in_tmp_cwd):
    demo = build_app(JobRegistry(), tmp_path / "ckpt")
    kd, nokd = kd_and_nokd_runs(demo, runs[1]["teacher"], reviews_parquet, cache_teacher_logits=True,
                                teacher_max_length=32, teacher_precision="int8", mixup_alpha=0.4, online_mask_prob=0.2,
                                freeze_word_embeddings=True, hidden_dropout=0.0, freeze_layers=1, weight_decay=0.05)
    assert (kd.run_config["teacher_max_length"], kd.run_config["meta"]["teacher_precision_effective"]) == (32, "int8")
    assert (kd.run_config["mixup_alpha"], kd.run_config["meta"]["mixup_targets"]) == (0.4, "teacher")
    assert (kd.run_config["online_mask_prob"], kd.run_config["meta"]["online_mask_targets"]) == (0.2, "teacher")
    assert (nokd.run_config["teacher_max_length"], nokd.run_config["meta"]["teacher_precision_effective"]) == \
        (None, None)  # the no-KD student of the same job has no teacher
    assert (nokd.run_config["mixup_alpha"], nokd.run_config["meta"]["mixup_targets"]) == (0.0, None)
    assert (nokd.run_config["online_mask_prob"], nokd.run_config["meta"]["online_mask_targets"]) == (0.0, None)
    for run in (kd, nokd):  # student recipe choices: the no-KD control freezes them and drops no hidden units too
        assert run.run_config["freeze_word_embeddings"] and run.run_config["meta"]["frozen_parameters"] > 0
        assert run.run_config["hidden_dropout"] == 0.0 and run.run_config["freeze_layers"] == 1
        assert run.run_config["weight_decay"] == 0.05


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 training is refused on CPU only")
def test_cpu_fp16_is_refused_and_bf16_reaches_the_runs(demo, runs, tmp_path, reviews_parquet, in_tmp_cwd,
                                                        teacher_dir):
    refusal = ("Not started: mixed_precision fp16 needs a CUDA GPU; on CPU use bf16 (fast on CPUs with AVX-512 BF16 "
               "or AMX) or no")
    _, status, _ = start_distill(demo, runs[1]["teacher"], reviews_parquet, mixed_precision="fp16")
    assert status == refusal, status
    _, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, reviews_parquet, mixed_precision="fp16"))
    assert status == refusal, status
    answers_next_good_request(demo, runs)
    fresh = build_app(JobRegistry(), tmp_path / "ckpt")
    job_id, status, _ = start_distill(fresh, runs[1]["teacher"], reviews_parquet, mixed_precision="bf16",
                                      also_nokd=True)
    snap = finished(fresh, job_id)
    assert snap.status == "done", snap.status_line
    kd, nokd = sorted(fresh.kdapp_context.runs(), key=lambda r: r.run_config["alpha"])
    assert kd.run_config["meta"]["mixed_precision_effective"] == nokd.run_config["meta"][
        "mixed_precision_effective"] == "bf16"  # the no-KD student of the same job trains like the KD one
    assert kd.run_config["meta"]["teacher_precision_effective"] == "bf16"


def test_transfer_windows_reach_the_kd_run_only(runs, tmp_path, reviews_parquet, in_tmp_cwd):
    demo = build_app(JobRegistry(), tmp_path / "ckpt")
    kd, nokd = kd_and_nokd_runs(demo, runs[1]["teacher"], reviews_parquet, cache_teacher_logits=True,
                                max_train_samples=20, transfer_data="rest", transfer_samples=40, transfer_windows=2)
    assert kd.run_config["transfer_windows"] == 2 and kd.run_config["meta"]["transfer_window_rows"] > 0
    assert nokd.run_config["transfer_windows"] == 0 and nokd.run_config["meta"]["transfer_window_rows"] == 0


def test_teacher_augmentation_reaches_the_run(runs, tmp_path, reviews_parquet, in_tmp_cwd, teacher_dir):
    demo = build_app(JobRegistry(), tmp_path / "ckpt")
    job_id, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, reviews_parquet, run_name="aug",
                                                                      augment_windows=2, augment_masked=1))
    snap = finished(demo, job_id)
    assert snap.status == "done", snap.status_line
    (run,) = [r for r in demo.kdapp_context.runs(("teacher",)) if r.name == "aug"]
    meta = run.run_config["meta"]
    assert (run.run_config["augment_windows"], run.run_config["augment_masked"]) == (2, 1)
    assert meta["augment_rows"] >= meta["train_rows"] > 0  # a masked copy of each review, and any windows


def test_holdout_fold_and_fold_teachers_reach_the_runs(runs, tmp_path, reviews_parquet, in_tmp_cwd, teacher_dir):
    demo = build_app(JobRegistry(), tmp_path / "ckpt")
    folds = []
    for k in range(2):
        job_id, status, _ = handler(demo, "start_teacher")(**teacher_form(teacher_dir, reviews_parquet,
                                                                          run_name=f"fold{k}", holdout_fold=f"{k}/2"))
        snap = finished(demo, job_id)
        assert snap.status == "done", snap.status_line
        (run,) = [r for r in demo.kdapp_context.runs(("teacher",)) if r.name == f"fold{k}"]
        meta = run.run_config["meta"]
        assert run.run_config["holdout_fold"] == f"{k}/2" and 0 < meta["held_out_rows"] <= meta["train_rows"] + 1
        folds.append(str(run.path))
    kd, nokd = kd_and_nokd_runs(demo, runs[1]["teacher"], reviews_parquet, cache_teacher_logits=True,
                                fold_teachers=" , ".join(folds))
    assert kd.run_config["fold_teachers"] == ",".join(folds)
    assert (kd.run_config["meta"]["cross_fit"]["folds"], kd.run_config["meta"]["cross_fit"]["fold_teachers"]) == \
        (2, folds)
    assert nokd.run_config["fold_teachers"] is None and nokd.run_config["meta"]["cross_fit"] is None
    fresh = build_app(JobRegistry(), tmp_path / "ckpt-views")  # its runs list holds this job's runs only
    extra = tmp_path / "extra.txt"  # unlabelled reviews, one per line: a transfer set the fold teachers never saw
    extra.write_text("".join(f"a {w} film, {w} acting\n" for w in ("fine", "dull", "grand", "weak")))
    kd, nokd = kd_and_nokd_runs(fresh, runs[1]["teacher"], reviews_parquet, cache_teacher_logits=True,
                                fold_teachers=",".join(folds), augment_masked=1, cross_fit_views=True,
                                augment_labels=True, transfer_data=str(extra), transfer_teachers=",".join(folds))
    assert kd.run_config["cross_fit_views"] and kd.run_config["meta"]["cross_fit"]["view_rows"] > 0
    assert kd.run_config["augment_labels"] and kd.run_config["meta"]["augment_targets"] == "labels+teacher"
    assert kd.run_config["meta"]["transfer_ensemble"]["rows"] == 4
    assert kd.run_config["transfer_teachers"] == ",".join(folds)
    assert not nokd.run_config["cross_fit_views"] and not nokd.run_config["augment_labels"]
    assert nokd.run_config["transfer_teachers"] is None and nokd.run_config["meta"]["transfer_ensemble"] is None


def test_teacher_and_student_with_different_tokenizers(runs, tmp_path, reviews_parquet):
    student = tmp_path / "other-vocab"
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(VOCAB[:5] + VOCAB[:4:-1]) + "\n")
    tiny_distilbert().save_pretrained(student)
    BertTokenizerFast.from_pretrained(str(tmp_path / "vocab")).save_pretrained(student)
    demo = build_app(JobRegistry(), tmp_path / "ckpt")
    job_id, status, _ = start_distill(demo, runs[1]["teacher"], reviews_parquet,
                                      student_source="hub id or local checkpoint", student=str(student))
    snap = finished(demo, job_id)
    assert snap.status == "failed" and describe(snap).startswith("failed: Teacher and student tokenizers differ")
    assert demo.kdapp_context.registry.active() is None  # the slot is free again
    answers_next_good_request(demo, runs)


# ---------------------------------------------------------------- models and checkpoints
@pytest.mark.parametrize("name, message", [
    ("no-such-org/no-such-model", "the Hugging Face hub is unreachable"),
    ("/no/such/folder", "not found"),
])
def test_unknown_model_or_unreachable_hub(demo, runs, name, message):
    t, s, info = compare(demo, "good", name)
    assert t is None and message in info
    answers_next_good_request(demo, runs)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "model.safetensors is corrupt or truncated"),
    ("config.json", "has no config.json"),
    ("tokenizer", "has no tokenizer files"),
])
def test_corrupted_checkpoint(demo, runs, tmp_path, damage, message):
    folder = shutil.copytree(runs[1]["kd"], tmp_path / "broken")
    if damage == "truncate":
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:999])
    elif damage == "config.json":
        (folder / "config.json").unlink()
    else:
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            (folder / f).unlink(missing_ok=True)
    t, s, info = compare(demo, "good", runs[1]["teacher"], folder)
    assert (t, s) == (None, None) and message in info
    answers_next_good_request(demo, runs)


# ---------------------------------------------------------------- the public-Space lock
def test_training_and_benchmarks_need_the_password(locked, runs, teacher_dir, reviews_parquet):
    ctx = locked.kdapp_context
    for password in ("", "wrong", PASSWORD[:-1]):
        _, status, _ = handler(locked, "start_teacher")(**teacher_form(teacher_dir, reviews_parquet),
                                                        password=password)
        assert status.startswith("Not started: Locked: starting training or a benchmark on this Space needs the "
                                 "admin password")
        _, status, _ = start_distill(locked, runs[1]["teacher"], reviews_parquet, password=password)
        assert "Locked" in status
        table, _ = handler(locked, "benchmark")([str(runs[1]["kd"])], [1], 16, "cpu", ["fp32"], "random tokens", 2,
                                                1, password)
        assert table.startswith("⚠️ Locked")
        _, status, _ = handler(locked, "resume_run")("anything", password)
        assert "Locked" in status
    assert ctx.registry.active() is None and ctx.registry.latest() is None  # nothing ran
    answers_next_good_request(locked, runs)  # predictions stay open to everyone
    table, _ = handler(locked, "benchmark")([str(runs[1]["kd"])], [1], 16, "cpu", ["fp32"], "random tokens", 2, 1,
                                            PASSWORD)
    assert "Latency, batch 1" in table


@pytest.mark.parametrize("name", ["/etc", "/etc/passwd", "../../..", "~", "{root}/../elsewhere", "./kdapp",
                                  "{root}/escape"])
def test_the_browser_cannot_name_a_server_path_when_locked(locked, runs, tmp_path, name):
    root = runs[0]
    escape = root / "escape"
    if not escape.exists():
        escape.symlink_to(tmp_path, target_is_directory=True)  # a link inside the root to a folder outside it
    t, s, info = compare(locked, "good", name.format(root=root))
    assert t is None and "is refused on this public app" in info and "Other server paths" in info, info
    _, status, _ = start_distill(locked, name.format(root=root), "imdb", password=PASSWORD)
    assert "is refused on this public app" in status
    answers_next_good_request(locked, runs)


def test_locked_app_still_takes_runs_hub_ids_and_minilm(locked, runs):
    ctx = locked.kdapp_context
    assert ctx.model_name(str(runs[1]["kd"])) == str(runs[1]["kd"])
    assert ctx.model_name("distilbert-base-uncased") == "distilbert-base-uncased"
    assert ctx.model_name("minilm") == "minilm" and ctx.model_name("arch:bert-base-uncased")
    _, _, info = compare(locked, "good", "no-such-org/no-such-model")  # a hub id is tried (and is offline here)
    assert "unreachable" in info and "refused" not in info


def test_locked_app_refuses_server_data_paths_but_takes_uploads(locked, runs, teacher_dir, tmp_path):
    start = handler(locked, "start_teacher")
    _, status, _ = start(**teacher_form(teacher_dir, "imdb"), password=PASSWORD)
    assert "tiny-teacher' is refused on this public app" in status  # a model folder outside the checkpoints root
    model = runs[1]["teacher"]  # a run under the root is fine
    _, status, _ = start(**teacher_form(model, "/etc/passwd"), password=PASSWORD)
    assert "Data '/etc/passwd' is refused on this public app" in status and "upload" in status
    upload = tmp_path / "up.csv"
    make_reviews(40).to_csv(upload, index=False)
    job_id, status, _ = start(**teacher_form(model, "/etc/passwd", run_name="from-upload"), upload=str(upload),
                              password=PASSWORD)
    assert finished(locked, job_id).status == "done", status


def test_no_secret_in_the_page_or_its_config(runs, monkeypatch):
    key = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", key)
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setenv("KDAPP_ADMIN_PASSWORD", PASSWORD)
    demo = build_app(JobRegistry(), runs[0])
    url = launch(demo)
    try:
        for path in ("", "config", "gradio_api/info"):
            page = urllib.request.urlopen(url + path, timeout=30).read().decode()
            assert key not in page and "hf_xxxx" not in page and PASSWORD not in page
        assert 'Admin password' in urllib.request.urlopen(url + "config", timeout=30).read().decode()
    finally:
        demo.close()


# ---------------------------------------------------------------- resume an interrupted run from the app
class CrashAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            raise RuntimeError("simulated crash")


def test_resume_an_interrupted_run_from_the_app(tmp_path, teacher_dir, reviews_parquet):
    root = tmp_path / "ckpt"
    cfg = RunConfig(kind="teacher", model=str(teacher_dir), data=str(reviews_parquet), max_length=16, max_steps=4,
                    save_steps=2, per_device_train_batch_size=8, max_eval_samples=16, eval_strategy="no",
                    logging_steps=1, num_threads=1, output_dir=str(root / "interrupted"))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_teacher(cfg, callbacks=[CrashAt()])
    demo = build_app(JobRegistry(), root)
    assert demo.kdapp_context.runs() == []
    (label, path), = incomplete_choices(demo.kdapp_context)
    assert label == "interrupted · teacher · checkpoint-2" and path == str(root / "interrupted.incomplete")
    _, status, _ = handler(demo, "resume_run")(str(tmp_path), "")
    assert "Not resumed: Pick an interrupted run" in status
    job_id, status, _ = handler(demo, "resume_run")(path, "")
    snap = finished(demo, job_id)
    assert snap.status == "done", snap.status_line
    (run,) = demo.kdapp_context.runs()
    assert run.name == "interrupted" and run.metrics["global_step"] == 4 and list_incomplete(root) == []
    assert snap.history[0]["step"] >= 3  # continued from checkpoint-2, not restarted


# ---------------------------------------------------------------- over HTTP with gradio_client
@pytest.fixture(scope="module")
def client(locked):
    from gradio_client import Client

    url = launch(locked)
    yield Client(url, verbose=False)
    locked.close()


def test_client_bad_reviews_then_a_good_one(client, runs):
    teacher, kd = str(runs[1]["teacher"]), str(runs[1]["kd"])
    *_, info = client.predict("   ", teacher, kd, api_name="/compare")
    assert "Type or paste a review first" in info
    *_, info = client.predict("the film was dull " * 60_000, teacher, kd, api_name="/compare")
    assert "only the first 100,000 were read" in info
    *_, info = client.predict("good", "/etc", kd, api_name="/compare")
    assert "is refused on this public app" in info
    t, s, info = client.predict("😀 a wonderful film", teacher, kd, api_name="/compare")
    assert t["label"] in ("POSITIVE", "NEGATIVE") and "ms" in info


def test_client_locked_start_then_twenty_concurrent_predictions(client, runs, teacher_dir, reviews_parquet):
    form = teacher_form(runs[1]["teacher"], reviews_parquet)
    before = client.predict("", api_name="/job_status")
    _, status, _ = client.predict(**form, api_name="/start_teacher")  # no password given
    assert "Locked" in status
    assert client.predict("", api_name="/job_status").get("id") == before.get("id")  # no job was started
    jobs = [client.submit(f"review {i}: the movie was great", str(runs[1]["teacher"]), str(runs[1]["kd"]),
                          api_name="/compare") for i in range(20)]
    infos = [job.result(timeout=120)[2] for job in jobs]
    assert all(" ms" in info for info in infos)  # the queue answered every one of them
