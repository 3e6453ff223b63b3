"""Recipe options of the distillation-that-pays issue: warm-up, window augmentation, sweep, temperature scaling."""
import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from kdapp import RunConfig, distill_student, train_teacher
from kdapp.calibration import calibrate_checkpoint
from kdapp.data import load_splits
from kdapp.encoding import masked_views, window_views
from kdapp.sweep import grid, run_sweep


@pytest.fixture(scope="module")
def long_reviews(tmp_path_factory):
    """Reviews long enough (at max_length 16) to have several windows each."""
    from conftest import make_reviews

    df = make_reviews(120, seed=3)
    df["text"] = (df["text"] + " ") * 4
    path = tmp_path_factory.mktemp("long") / "long.parquet"
    df.to_parquet(path)
    return path


def _teacher(tmp_path, teacher_dir, data, **kw):
    cfg = RunConfig(model=str(teacher_dir), data=str(data), max_length=16, max_steps=4, learning_rate=1e-3,
                    per_device_train_batch_size=8, eval_strategy="no", output_dir=str(tmp_path / "teacher"), **kw)
    return train_teacher(cfg)


def test_warmup_then_linear_decay(tmp_path, teacher_dir, reviews_parquet):
    result = _teacher(tmp_path, teacher_dir, reviews_parquet, warmup_steps=0.5, logging_steps=1)
    lrs = [h["learning_rate"] for h in result.log_history if "learning_rate" in h]
    assert len(lrs) == 4
    peak = int(np.argmax(lrs))
    assert lrs[0] < lrs[peak] and peak >= 1  # rises during warm-up
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then decays
    assert lrs[-1] < lrs[peak]


def test_window_views_are_other_parts_of_the_review(tokenizer):
    text = " ".join(["good"] * 14 + ["bad"] * 14 + ["dull"] * 14)
    views, owner = window_views(tokenizer, ["short review", text], max_length=16, per_review=5)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [v[1:-1] for v in views] == [ids[14:28], ids[28:42]]  # the windows after the first, none for short text
    assert owner == [1, 1]
    assert all(v[0] == tokenizer.cls_token_id and v[-1] == tokenizer.sep_token_id for v in views)


def test_augment_windows_adds_kd_only_rows(tmp_path, teacher_dir, long_reviews):
    _teacher(tmp_path, teacher_dir, long_reviews)
    cfg = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher", data=str(long_reviews),
                    max_length=16, max_steps=3, augment_windows=2, cache_teacher_logits=True, eval_strategy="no",
                    output_dir=str(tmp_path / "aug"))
    result = distill_student(cfg)
    meta = json.loads((tmp_path / "aug" / "run_config.json").read_text())["meta"]
    assert result.status == "done"
    assert meta["augment_rows"] > meta["train_rows"] > 0  # two windows for most reviews


def test_masked_views_mask_some_tokens_and_never_the_special_ones():
    seqs = [[101] + list(range(1000, 1200)) + [102], [101, 7, 8, 102]]
    views = masked_views(seqs, mask_id=103, copies=3, prob=0.25, seed=1, keep=frozenset({101, 102}))
    assert len(views) == 6 and [len(v) for v in views] == [len(s) for s in seqs] * 3
    for view, seq in zip(views, seqs * 3):
        assert view[0] == 101 and view[-1] == 102  # [CLS] and [SEP] stay
        assert all(v == s or v == 103 for v, s in zip(view, seq))  # a token is kept or masked, nothing else
    share = np.mean([v == 103 for v in views[0][1:-1]])
    assert 0.15 < share < 0.35  # about prob of the 200 tokens
    assert views[0] != views[2]  # each copy masks other tokens
    assert views == masked_views(seqs, mask_id=103, copies=3, prob=0.25, seed=1, keep=frozenset({101, 102}))


def test_augment_masked_adds_kd_only_copies(tmp_path, teacher_dir, reviews_parquet, monkeypatch):
    seen = _train_rows(monkeypatch)
    _teacher(tmp_path, teacher_dir, reviews_parquet)
    cfg = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher",
                    data=str(reviews_parquet), max_length=16, max_steps=3, augment_masked=2, augment_mask_prob=0.3,
                    cache_teacher_logits=True, eval_strategy="no", output_dir=str(tmp_path / "masked"))
    result = distill_student(cfg)
    meta = json.loads((tmp_path / "masked" / "run_config.json").read_text())["meta"]
    assert result.status == "done"
    assert meta["augment_rows"] == 2 * meta["train_rows"] > 0 and meta["augment_targets"] == "teacher"
    assert seen["train"]["label"][meta["train_rows"]:] == [-100] * meta["augment_rows"]  # no CE on the copies
    for bad in (dict(augment_masked=-1), dict(augment_masked=1, augment_mask_prob=1.0)):
        with pytest.raises(ValueError):
            RunConfig(kind="distill", teacher="t", **bad)


def _train_rows(monkeypatch, trainer: str = "DistillationTrainer") -> dict:
    """What the trainer is given: {"train": its train_dataset} once the run has built it (trainer: the class the run
    uses, DistillationTrainer for a student, Trainer for a teacher)."""
    import kdapp.train as train_module

    seen = {}
    real = getattr(train_module, trainer)

    def spy(*args, **kwargs):
        seen["train"] = kwargs["train_dataset"]
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, trainer, spy)
    return seen


def _teacher_caches(monkeypatch) -> list:
    """The (logits, hit) of every logit-cache pass a run makes, in order (computed afresh: no cache folder)."""
    import kdapp.train as train_module

    caches = []
    real_cache = train_module.teacher_logits
    monkeypatch.setattr(train_module, "teacher_logits",
                        lambda *a, **kw: caches.append(real_cache(*a, **kw, cache_dir=None)) or caches[-1])
    return caches


def test_no_kd_windows_carry_their_review_label(tmp_path, teacher_dir, long_reviews, monkeypatch):
    """The control run: alpha = 1 trains on the further windows with their own review's label (no teacher)."""
    seen = _train_rows(monkeypatch)
    _teacher(tmp_path, teacher_dir, long_reviews)
    cfg = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher", alpha=1.0,
                    data=str(long_reviews), max_length=16, max_steps=2, augment_windows=2, augment_masked=1,
                    eval_strategy="no", output_dir=str(tmp_path / "nokd-windows"))
    assert distill_student(cfg).status == "done"
    meta = json.loads((tmp_path / "nokd-windows" / "run_config.json").read_text())["meta"]
    n, rows = meta["train_rows"], seen["train"]
    views, owner = window_views(AutoTokenizer.from_pretrained(str(tmp_path / "teacher")),
                                load_splits(str(long_reviews))["train"]["text"], 16, 2)
    assert meta["augment_rows"] == len(views) + n and len(views) > n and meta["augment_targets"] == "labels"
    assert rows["input_ids"][n: n + len(views)] == views  # the windows, then the masked copies
    assert rows["label"][n: n + len(views)] == [rows["label"][i] for i in owner]  # each with its review's label
    assert rows["label"][n + len(views):] == rows["label"][:n]


def test_augment_labels_gives_a_kd_students_views_their_review_label_and_soft_targets(tmp_path, teacher_dir,
                                                                                        long_reviews, monkeypatch):
    """--augment_labels: a KD student's windows and masked copies carry their review's label (CE) and keep the
    teacher's soft targets in the cache (KD), as the labelled reviews do."""
    seen, caches = _train_rows(monkeypatch), _teacher_caches(monkeypatch)
    _teacher(tmp_path, teacher_dir, long_reviews)
    cfg = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher",
                    data=str(long_reviews), max_length=16, max_steps=2, augment_windows=2, augment_masked=1,
                    augment_labels=True, cache_teacher_logits=True, eval_strategy="no",
                    output_dir=str(tmp_path / "kd-labelled-views"))
    assert distill_student(cfg).status == "done"
    meta = json.loads((tmp_path / "kd-labelled-views" / "run_config.json").read_text())["meta"]
    n, rows = meta["train_rows"], seen["train"]
    views, owner = window_views(AutoTokenizer.from_pretrained(str(tmp_path / "teacher")),
                                load_splits(str(long_reviews))["train"]["text"], 16, 2)
    assert meta["augment_targets"] == "labels+teacher" and meta["augment_rows"] == len(views) + n
    assert rows["label"][n: n + len(views)] == [rows["label"][i] for i in owner]
    assert rows["label"][n + len(views):] == rows["label"][:n] and -100 not in rows["label"]
    cache, _ = caches[-1]
    assert len(cache) == len(rows)  # every view still has the teacher's soft targets


def test_augment_labels_needs_views_to_label():
    with pytest.raises(ValueError, match="augment_labels needs augment_windows or augment_masked"):
        RunConfig(kind="distill", teacher="t", augment_labels=True)
    RunConfig(kind="distill", teacher="t", augment_masked=1, augment_labels=True)


def test_teacher_trains_on_windows_and_masked_copies_with_their_review_label(tmp_path, teacher_dir, long_reviews,
                                                                            monkeypatch):
    """A teacher's augmentation rows: the same windows and masked copies a student gets, each with its review's
    label (a teacher has no one else to label them)."""
    seen = _train_rows(monkeypatch, "Trainer")
    result = _teacher(tmp_path, teacher_dir, long_reviews, augment_windows=2, augment_masked=1)
    assert result.status == "done"
    meta = json.loads((tmp_path / "teacher" / "run_config.json").read_text())["meta"]
    n, rows = meta["train_rows"], seen["train"]
    views, owner = window_views(AutoTokenizer.from_pretrained(str(teacher_dir)),
                                load_splits(str(long_reviews))["train"]["text"], 16, 2)
    assert len(views) > n and meta["augment_rows"] == len(views) + n == len(rows) - n
    assert rows["input_ids"][n: n + len(views)] == views
    assert rows["label"][n: n + len(views)] == [rows["label"][i] for i in owner]
    masked = rows["input_ids"][n + len(views):]
    assert rows["label"][n + len(views):] == rows["label"][:n]
    assert [len(v) for v in masked] == [len(v) for v in rows["input_ids"][:n]] and masked != rows["input_ids"][:n]


def test_transfer_windows_are_kd_only_rows_of_the_transfer_reviews(tmp_path, teacher_dir, long_reviews,
                                                                   monkeypatch):
    """--transfer_windows: further windows of each long transfer review, after the labelled views, label -100 (KD
    only), with the teacher's soft targets for every one of them in the logit cache."""
    from kdapp.data import load_transfer_texts

    seen, caches = _train_rows(monkeypatch), _teacher_caches(monkeypatch)
    _teacher(tmp_path, teacher_dir, long_reviews)
    cfg = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher", data=str(long_reviews),
                    max_train_samples=30, transfer_data="rest", transfer_samples=20, augment_windows=1,
                    transfer_windows=2, cache_teacher_logits=True, max_length=16, max_steps=2, eval_strategy="no",
                    output_dir=str(tmp_path / "kd-tw"))
    assert distill_student(cfg).status == "done"
    meta = json.loads((tmp_path / "kd-tw" / "run_config.json").read_text())["meta"]
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "teacher"))
    labelled_views, _ = window_views(tok, load_splits(str(long_reviews), max_train_samples=30)["train"]["text"], 16, 1)
    transfer_views, _ = window_views(tok, load_transfer_texts("rest", str(long_reviews), 30, 20), 16, 2)
    assert len(transfer_views) > 20  # two windows for most transfer reviews
    assert (meta["train_rows"], meta["transfer_rows"], meta["augment_rows"]) == (30, 20, len(labelled_views))
    assert meta["transfer_window_rows"] == len(transfer_views)
    rows = seen["train"]
    assert rows["input_ids"][-len(transfer_views):] == transfer_views
    assert rows["label"][-len(transfer_views):] == [-100] * len(transfer_views)
    cache, _ = caches[-1]
    assert len(cache) == len(rows)


def test_transfer_windows_need_a_transfer_set():
    with pytest.raises(ValueError, match="transfer_data"):
        RunConfig(kind="distill", teacher="t", transfer_windows=2)
    with pytest.raises(ValueError):
        RunConfig(kind="distill", teacher="t", transfer_data="rest", transfer_windows=-1)


def test_no_kd_masked_copies_keep_the_review_label(tmp_path, teacher_dir, reviews_parquet, monkeypatch):
    """The control run: alpha = 1 trains on the masked copies with their reviews' labels (no teacher)."""
    seen = _train_rows(monkeypatch)
    _teacher(tmp_path, teacher_dir, reviews_parquet)
    cfg = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher", alpha=1.0,
                    data=str(reviews_parquet), max_length=16, max_steps=2, augment_masked=1, eval_strategy="no",
                    output_dir=str(tmp_path / "nokd-masked"))
    assert distill_student(cfg).status == "done"
    meta = json.loads((tmp_path / "nokd-masked" / "run_config.json").read_text())["meta"]
    labels, n = seen["train"]["label"], meta["train_rows"]
    assert meta["augment_rows"] == n and meta["augment_targets"] == "labels"
    assert labels[n:] == labels[:n] and -100 not in labels  # each copy carries its review's label


def test_sweep_writes_one_result_per_grid_point(tmp_path, teacher_dir, reviews_parquet):
    _teacher(tmp_path, teacher_dir, reviews_parquet)
    base = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher",
                     data=str(reviews_parquet), max_length=16, max_steps=2, max_eval_samples=16, eval_strategy="no")
    assert grid([0.5, 1.0], [1.0, 4.0]) == [(0.5, 1.0), (0.5, 4.0), (1.0, 1.0)]
    rows = run_sweep(base, [0.5, 1.0], [1.0, 4.0], sweep_dir=tmp_path / "sweep")
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
    assert [(r["alpha"], r["temperature"]) for r in rows] == [(0.5, 1.0), (0.5, 4.0), (1.0, 1.0)] == \
        [(r["alpha"], r["temperature"]) for r in saved]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["ece"] >= 0 for r in rows)
    assert not (tmp_path / "sweep" / "a0.5-T1" / "model.safetensors").exists()  # weights dropped by default


def test_sweep_no_kd_point_drops_the_kd_only_options(tmp_path, teacher_dir, reviews_parquet):
    _teacher(tmp_path, teacher_dir, reviews_parquet)
    base = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher",
                     data=str(reviews_parquet), max_length=16, max_steps=2, max_eval_samples=16, eval_strategy="no",
                     augment_masked=1, transfer_data="rest", transfer_samples=8)
    rows = run_sweep(base, [1.0], [2.0], sweep_dir=tmp_path / "sweep")
    saved = json.loads((tmp_path / "sweep" / "a1-T2" / "run_config.json").read_text())
    assert len(rows) == 1 and saved["alpha"] == 1.0
    assert (saved["augment_masked"], saved["transfer_data"], saved["meta"]["augment_rows"]) == (0, None, 0)


def test_calibrate_fits_temperature_and_saves(tmp_path, teacher_dir, reviews_parquet):
    _teacher(tmp_path, teacher_dir, reviews_parquet)
    res = calibrate_checkpoint(str(tmp_path / "teacher"), str(reviews_parquet))
    assert res["temperature"] > 0
    assert res["after"]["accuracy"] == res["before"]["accuracy"]  # T never changes the argmax
    assert len(res["after"]["reliability"]) == 15
    assert json.loads((tmp_path / "teacher" / "calibration.json").read_text())["temperature"] == res["temperature"]


def test_no_kd_options_turn_any_kd_config_into_a_valid_no_kd_one():
    import dataclasses

    from kdapp.sweep import NO_KD_OPTIONS

    kd = RunConfig(kind="distill", teacher="t", max_length=64, transfer_data="rest", augment_windows=1,
                   augment_masked=1, teacher_max_length=128, cache_teacher_logits=True,
                   teacher_precision="int8", transfer_teachers="e0,e1")
    with pytest.raises(ValueError):
        dataclasses.replace(kd, alpha=1.0)
    nokd = dataclasses.replace(kd, alpha=1.0, **NO_KD_OPTIONS)
    assert (nokd.teacher_max_length, nokd.teacher_precision, nokd.transfer_data, nokd.transfer_teachers) == \
        (None, "auto", None, None)


def test_no_kd_mixup_control_runs_without_a_teacher(tmp_path, teacher_dir, reviews_parquet):
    _teacher(tmp_path, teacher_dir, reviews_parquet)
    cfg = RunConfig(kind="distill", teacher=str(tmp_path / "teacher"), student="from-teacher", alpha=1.0,
                    data=str(reviews_parquet), max_length=16, max_steps=2, mixup_alpha=0.4, eval_strategy="no",
                    output_dir=str(tmp_path / "nokd-mixup"))
    result = distill_student(cfg)
    meta = json.loads((tmp_path / "nokd-mixup" / "run_config.json").read_text())["meta"]
    assert result.status == "done" and meta["mixup_targets"] == "labels"
    assert all(h["loss_mix"] > 0 for h in result.log_history if "loss" in h)
    with pytest.raises(ValueError, match="mixup_alpha"):
        RunConfig(kind="distill", teacher="t", mixup_alpha=-0.5)
