"""Cross-fitted soft targets: fold teachers hold out one fold each and label it for the student."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_bert
from kdapp.cache import row_keys, teacher_fingerprint
from kdapp.config import FROM_TEACHER, RunConfig, parse_fold
from kdapp.cross_fit import cross_fit_logits, ensemble_logits, fold_rows, training_rows_outside_fold
from kdapp.data import load_splits, load_transfer_texts
from kdapp.encoding import encode
from kdapp.inference import logits_from_ids
from kdapp.models import load_pair
from kdapp.train import distill_student, train_teacher

FAST = dict(max_length=32, max_steps=2, per_device_train_batch_size=8, per_device_eval_batch_size=32,
            max_train_samples=48, max_eval_samples=16, logging_steps=1, learning_rate=1e-3, num_threads=1,
            eval_strategy="no")


def test_folds_partition_the_rows_and_a_teacher_trains_on_the_others():
    n, folds = 11, 3
    parts = [fold_rows(n, k, folds) for k in range(folds)]
    assert sorted(sum(parts, [])) == list(range(n))
    for k in range(folds):
        assert sorted(training_rows_outside_fold(n, k, folds) + parts[k]) == list(range(n))
    with pytest.raises(ValueError, match="at least 3 training rows"):
        training_rows_outside_fold(2, 0, 3)


@pytest.mark.parametrize("spec", ["4/4", "1/1", "0/0", "a/b", "-1/3", "2"])
def test_bad_holdout_fold_is_refused(spec):
    with pytest.raises(ValueError, match="holdout_fold must be 'k/K'"):
        RunConfig(kind="teacher", holdout_fold=spec)


def test_parse_fold():
    assert parse_fold("1/4") == (1, 4) and parse_fold(" 0 / 2 ") == (0, 2)


@pytest.mark.parametrize("kw", [dict(cache_teacher_logits=False), dict(alpha=1.0),
                                dict(teacher_precision="int8"), dict(hidden_loss="cosine"),
                                dict(fold_teachers=" , ")])
def test_fold_teachers_need_kd_with_the_logit_cache(kw):
    with pytest.raises(ValueError, match="fold_teachers"):
        RunConfig(kind="distill", teacher="t", **({"fold_teachers": "a,b", "cache_teacher_logits": True} | kw))


def test_cross_fit_logits_take_each_row_from_the_teacher_that_held_it_out(tokenizer):
    ids = encode(tokenizer, [f"the movie was {w}" for w in ["great", "awful", "good", "bad", "dull"] * 2], 16)
    teachers = [(tiny_bert(seed=k).eval(), k) for k in range(2)]
    cache = torch.randn(len(ids) + 3, 2)  # 10 labelled rows, then 3 transfer rows
    labels = [1, 0, 1, 0, 0] * 2
    out, info = cross_fit_logits(cache, ids, labels, tokenizer.pad_token_id, teachers, folds=2)
    for model, k in teachers:
        rows = fold_rows(len(ids), k, 2)
        expected = torch.from_numpy(logits_from_ids(model, [ids[i] for i in rows], tokenizer.pad_token_id))
        assert torch.allclose(out[rows], expected, atol=1e-5)
    assert torch.equal(out[len(ids):], cache[len(ids):])  # transfer rows keep the main teacher's logits
    assert info["folds"] == 2 and info["rows"] == len(ids)
    assert info["fold_teacher_accuracy"] == pytest.approx(
        float((out[:len(ids)].argmax(-1) == torch.tensor(labels)).float().mean()), abs=1e-4)


def test_cross_fit_views_go_to_the_teacher_that_held_their_review_out(tokenizer):
    ids = encode(tokenizer, [f"the movie was {w}" for w in ["great", "awful", "good", "bad", "dull"]], 16)
    views = encode(tokenizer, ["the movie [MASK] great", "was awful", "[MASK] good", "the bad", "dull dull"], 16)
    owners = [0, 1, 2, 3, 4]
    teachers = [(tiny_bert(seed=k).eval(), k) for k in range(2)]
    cache = torch.randn(len(ids) + 2 + len(views), 2)  # 5 labelled rows, 2 transfer rows, then the views
    labels = [1, 0, 1, 0, 0]
    start = len(ids) + 2
    out, info = cross_fit_logits(cache, ids, labels, tokenizer.pad_token_id, teachers, folds=2,
                                 views=(start, views, owners))
    plain, plain_info = cross_fit_logits(cache, ids, labels, tokenizer.pad_token_id, teachers, folds=2)
    assert torch.equal(out[:start], plain[:start])  # labelled rows as without views; transfer rows untouched
    assert torch.equal(out[len(ids):start], cache[len(ids):start])
    for j, owner in enumerate(owners):
        model = teachers[owner % 2][0]
        expected = torch.from_numpy(logits_from_ids(model, [views[j]], tokenizer.pad_token_id))[0]
        assert torch.allclose(out[start + j], expected, atol=1e-5)
    truth = torch.tensor([labels[o] for o in owners])
    assert info["view_rows"] == len(views)
    assert info["view_fold_teacher_accuracy"] == pytest.approx(
        float((out[start:].argmax(-1) == truth).float().mean()), abs=1e-4)
    assert info["view_teacher_accuracy"] == pytest.approx(
        float((cache[start:].argmax(-1) == truth).float().mean()), abs=1e-4)
    assert "view_rows" not in plain_info


def test_cross_fit_views_need_fold_teachers():
    with pytest.raises(ValueError, match="cross_fit_views needs fold_teachers"):
        RunConfig(kind="distill", teacher="t", cache_teacher_logits=True, cross_fit_views=True)


def test_ensemble_logits_put_the_teachers_mean_on_the_given_rows_only(tokenizer):
    ids = encode(tokenizer, ["the movie was great", "awful", "good and dull"], 16)
    teachers = [tiny_bert(seed=k).eval() for k in range(3)]
    cache = torch.randn(7, 2)  # 4 labelled rows, then the 3 transfer rows
    out, info = ensemble_logits(cache, [4, 5, 6], ids, tokenizer.pad_token_id, teachers)
    each = torch.stack([torch.from_numpy(logits_from_ids(m, ids, tokenizer.pad_token_id)) for m in teachers])
    assert torch.allclose(out[4:], each.mean(0), atol=1e-5)
    assert not torch.allclose(out[4:], each[0], atol=1e-3)  # the mean, not one teacher's logits
    assert torch.equal(out[:4], cache[:4])
    assert (info["teachers"], info["rows"]) == (3, 3)
    assert info["agreement_with_teacher"] == pytest.approx(
        float((out[4:].argmax(-1) == cache[4:].argmax(-1)).float().mean()), abs=1e-4)
    assert ensemble_logits(cache, [], [], tokenizer.pad_token_id, teachers)[1]["rows"] == 0


@pytest.mark.parametrize("kw", [dict(transfer_data=None), dict(cache_teacher_logits=False),
                                dict(hidden_loss="cosine"), dict(transfer_teachers=" , ")])
def test_transfer_teachers_need_a_transfer_set_and_the_logit_cache(kw):
    with pytest.raises(ValueError, match="transfer_teachers"):
        RunConfig(kind="distill", teacher="t", **({"transfer_teachers": "a,b", "transfer_data": "rest",
                                                   "cache_teacher_logits": True} | kw))


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory, teacher_dir, reviews_parquet):
    """A teacher and two fold teachers (0/2, 1/2) trained on the same 48 rows; cwd holds the logit cache."""
    path = tmp_path_factory.mktemp("cross_fit")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        runs = {}
        for name, fold in (("teacher", None), ("fold0", "0/2"), ("fold1", "1/2")):
            result = train_teacher(RunConfig(kind="teacher", model=str(teacher_dir), data=str(reviews_parquet),
                                             output_dir=str(path / name), holdout_fold=fold, **FAST))
            assert result.status == "done", result.message
            runs[name] = result.output_dir
        yield path, runs


def test_a_fold_teacher_trains_on_the_other_folds_only(fold_runs):
    _, runs = fold_runs
    meta = json.loads((runs["fold1"] / "run_config.json").read_text())["meta"]
    assert (meta["train_rows"], meta["held_out_rows"]) == (24, 24)
    assert json.loads((runs["teacher"] / "run_config.json").read_text())["meta"]["held_out_rows"] == 0


def test_student_learns_each_labelled_row_from_the_fold_teacher_that_held_it_out(fold_runs, reviews_parquet):
    path, runs = fold_runs
    cfg = RunConfig(kind="distill", teacher=str(runs["teacher"]), student=FROM_TEACHER, data=str(reviews_parquet),
                    output_dir=str(path / "student"), cache_teacher_logits=True, transfer_data="rest",
                    transfer_samples=8, fold_teachers=f"{runs['fold0']}, {runs['fold1']}", **FAST)
    result = distill_student(cfg)
    assert result.status == "done", result.message
    cross_fit = json.loads((result.output_dir / "run_config.json").read_text())["meta"]["cross_fit"]
    assert cross_fit["folds"] == 2 and cross_fit["rows"] == 48
    assert cross_fit["fold_teachers"] == [str(runs["fold0"]), str(runs["fold1"])]
    # each fold teacher labelled exactly the labelled rows it held out (its own cache file), and no transfer row
    _, tok = load_pair(str(runs["teacher"]))
    ids = encode(tok, load_splits(str(reviews_parquet), None, 48)["train"]["text"], 32)
    for k, name in enumerate(("fold0", "fold1")):
        model, _ = load_pair(str(runs[name]))
        stored = load_file(path / "checkpoints" / ".cache" / "logits" / f"{teacher_fingerprint(model)}.safetensors")
        expected = {key.tobytes() for key in row_keys([ids[i] for i in fold_rows(48, k, 2)])}
        assert {key.tobytes() for key in stored["keys"].numpy()} == expected


def test_student_learns_each_view_from_the_fold_teacher_that_held_its_review_out(fold_runs, reviews_parquet):
    path, runs = fold_runs
    folds = f"{runs['fold0']},{runs['fold1']}"
    common = dict(kind="distill", teacher=str(runs["teacher"]), student=FROM_TEACHER, data=str(reviews_parquet),
                  cache_teacher_logits=True, augment_masked=1, fold_teachers=folds, **FAST)
    result = distill_student(RunConfig(output_dir=str(path / "views"), cross_fit_views=True, **common))
    assert result.status == "done", result.message
    cross_fit = json.loads((result.output_dir / "run_config.json").read_text())["meta"]["cross_fit"]
    assert cross_fit["view_rows"] == 48  # one masked copy of each labelled review
    assert 0 <= cross_fit["view_fold_teacher_accuracy"] <= 1 and 0 <= cross_fit["view_teacher_accuracy"] <= 1
    # each fold teacher's cache now also holds the masked copies of its fold's reviews: more keys than its reviews
    for k, name in enumerate(("fold0", "fold1")):
        model, _ = load_pair(str(runs[name]))
        stored = load_file(path / "checkpoints" / ".cache" / "logits" / f"{teacher_fingerprint(model)}.safetensors")
        assert len(stored["keys"]) >= 24 + 20  # 24 reviews and their copies (a copy may equal its review)
    without = distill_student(RunConfig(output_dir=str(path / "no-views"), **common))
    assert "view_rows" not in json.loads((without.output_dir / "run_config.json").read_text())["meta"]["cross_fit"]


def test_transfer_rows_learn_from_the_ensembles_mean(fold_runs, reviews_parquet, monkeypatch, tmp_path):
    """--transfer_teachers: the transfer rows' soft targets are the mean of the ensemble's logits; the labelled rows
    keep the teacher's; each ensemble teacher labels the transfer rows only."""
    import kdapp.train as train_module

    path, runs = fold_runs
    monkeypatch.chdir(tmp_path)  # an empty logit cache
    seen, real = {}, train_module.DistillationTrainer

    def spy(*args, **kwargs):
        seen["cache"] = kwargs["logit_cache"]
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "DistillationTrainer", spy)
    ensemble = [runs["fold0"], runs["fold1"]]
    cfg = RunConfig(kind="distill", teacher=str(runs["teacher"]), student=FROM_TEACHER, data=str(reviews_parquet),
                    output_dir=str(path / "ensemble"), cache_teacher_logits=True, transfer_data="rest",
                    transfer_samples=8, transfer_teachers=",".join(map(str, ensemble)), **FAST)
    result = distill_student(cfg)
    assert result.status == "done", result.message
    meta = json.loads((result.output_dir / "run_config.json").read_text())["meta"]
    assert meta["transfer_ensemble"]["rows"] == 8 and meta["transfer_ensemble"]["teachers"] == 2
    assert meta["transfer_ensemble"]["transfer_teachers"] == [str(r) for r in ensemble]
    teacher, tok = load_pair(str(runs["teacher"]))
    texts = load_transfer_texts("rest", str(reviews_parquet), 48, 8)
    transfer_ids, labelled_ids = encode(tok, texts, 32), encode(tok, load_splits(str(reviews_parquet), None, 48)
                                                                ["train"]["text"], 32)
    models = [load_pair(str(r))[0].eval() for r in ensemble]
    mean = torch.stack([torch.from_numpy(logits_from_ids(m, transfer_ids, tok.pad_token_id)) for m in models]).mean(0)
    cache = seen["cache"]
    assert len(cache) == 48 + 8
    assert torch.allclose(cache[48:], mean, atol=1e-4)
    own = torch.from_numpy(logits_from_ids(teacher.eval(), labelled_ids, tok.pad_token_id))
    assert torch.allclose(cache[:48], own, atol=1e-4)  # the labelled rows keep the teacher's soft targets
    for model in models:  # each ensemble teacher's cache file: the transfer rows and nothing else
        stored = load_file(tmp_path / "checkpoints" / ".cache" / "logits" / f"{teacher_fingerprint(model)}.safetensors")
        assert {k.tobytes() for k in stored["keys"].numpy()} == {k.tobytes() for k in row_keys(transfer_ids)}


@pytest.mark.parametrize("which, match", [
    (["fold0"], r"fold\(s\) 1/2 are missing"),
    (["fold0", "fold0"], "held out by both"),
    (["fold0", "teacher"], "trained on every labelled row"),
])
def test_fold_teachers_that_do_not_cover_the_folds_once_are_refused(fold_runs, reviews_parquet, which, match):
    path, runs = fold_runs
    cfg = RunConfig(kind="distill", teacher=str(runs["teacher"]), student=FROM_TEACHER, data=str(reviews_parquet),
                    output_dir=str(path / "refused"), cache_teacher_logits=True,
                    fold_teachers=",".join(str(runs[w]) for w in which), **FAST)
    with pytest.raises(ValueError, match=match):
        distill_student(cfg)
    assert not (path / "refused").exists()


def test_fold_teachers_of_other_rows_are_refused(fold_runs, reviews_parquet):
    path, runs = fold_runs
    cfg = RunConfig(kind="distill", teacher=str(runs["teacher"]), student=FROM_TEACHER, data=str(reviews_parquet),
                    output_dir=str(path / "other-rows"), cache_teacher_logits=True,
                    fold_teachers=f"{runs['fold0']},{runs['fold1']}", **(FAST | dict(max_train_samples=40)))
    with pytest.raises(ValueError, match="trained on other rows"):
        distill_student(cfg)
