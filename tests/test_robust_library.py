"""Robustness of the library: one test per bad input of issue 5, each asserting the message and that the next good
call is answered; then jobs that fail (out of memory) or are cancelled (a whole checkpoint or none)."""
import shutil

import pytest
import transformers

from conftest import VOCAB, make_reviews
from kdapp.checkpoints import list_incomplete, list_runs
from kdapp.config import RunConfig
from kdapp.data import DataError, load_splits, read_source
from kdapp.encoding import MAX_REVIEW_CHARS, encode
from kdapp.inference import predict
from kdapp.jobs import JobRegistry, Stage
from kdapp.models import ModelError, check_same_tokenizer, load_pair
from kdapp.redact import redact
from kdapp.train import train_teacher

TINY = dict(kind="teacher", max_length=16, max_steps=4, per_device_train_batch_size=8, per_device_eval_batch_size=32,
            logging_steps=1, eval_strategy="no", max_train_samples=64, max_eval_samples=16, learning_rate=1e-3,
            num_threads=1)


@pytest.fixture(scope="module")
def pair(teacher_dir):
    model, tok = load_pair(str(teacher_dir))
    return model.eval(), tok


def good_prediction(pair):
    """The next good request: a plain review is classified."""
    (p,) = predict(*pair, ["the movie was great"], max_length=16)
    assert p["label"] in ("POSITIVE", "NEGATIVE") and abs(sum(p["probs"]) - 1) < 1e-5


def good_data(reviews_parquet):
    assert len(read_source(str(reviews_parquet))["train"]) == 240


# ---------------------------------------------------------------- reviews
@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_or_whitespace_review_gives_only_the_special_tokens(pair, text):
    model, tok = pair
    assert encode(tok, [text], 16) == [[tok.cls_token_id, tok.sep_token_id]]  # no crash, nothing invented
    (p,) = predict(model, tok, [text], max_length=16)
    assert abs(sum(p["probs"]) - 1) < 1e-5  # the UI and CLI refuse it with a message before this point
    good_prediction(pair)


def test_one_megabyte_review_is_capped_not_out_of_memory(pair):
    model, tok = pair
    huge = "the movie was great " * 52_429  # ~1 MB
    assert len(huge) > 1_000_000
    for truncation in ("head", "head_tail"):
        (ids,) = encode(tok, [huge], 32, truncation)
        assert len(ids) <= 32
    assert predict(model, tok, [huge], max_length=16) == predict(model, tok, [huge[:MAX_REVIEW_CHARS]], max_length=16)
    good_prediction(pair)


@pytest.mark.parametrize("text, expect", [
    ("great<br /><br />movie<BR>the<br/>plot", ["great", "movie", "the", "plot"]),  # IMDb's line breaks go
    ("great 😀🎬 movie", ["great", "[UNK]", "movie"]),
    ("Отличный фильм great", ["[UNK]", "[UNK]", "great"]),
    ("映画 great", ["[UNK]", "[UNK]", "great"]),  # CJK: one token per character
])
def test_html_emoji_and_non_latin_scripts(pair, text, expect):
    model, tok = pair
    (ids,) = encode(tok, [text], 32)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", *expect, "[SEP]"]
    (p,) = predict(model, tok, [text], max_length=32)
    assert p["label"] in ("POSITIVE", "NEGATIVE")
    good_prediction(pair)


@pytest.mark.parametrize("suffix, content, line", [
    (".csv", b"text,label\ngood film,1\nbad \xff\xfe film,0\n", 3),
    (".jsonl", b'{"text": "good film", "label": 1}\n{"text": "bad \xc3( film", "label": 0}\n', 2),
])
def test_invalid_utf8_in_a_data_file(tmp_path, reviews_parquet, suffix, content, line):
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{path.name} is not valid UTF-8: byte 0x.. at offset \d+ \(line {line}\)"):
        read_source(str(path))
    good_data(reviews_parquet)


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("values, message", [
    (dict(kind="distill", teacher="t", alpha=-0.1), "alpha must be in [0, 1], got -0.1"),
    (dict(kind="distill", teacher="t", alpha=1.5), "alpha must be in [0, 1], got 1.5"),
    (dict(kind="distill", teacher="t", temperature=0), "temperature must be > 0, got 0"),
    (dict(kind="distill", teacher="t", temperature=-2.0), "temperature must be > 0, got -2.0"),
    (dict(learning_rate=0), "learning_rate must be > 0, got 0"),
    (dict(learning_rate=-1e-5), "learning_rate must be > 0"),
    (dict(num_train_epochs=0), "num_train_epochs must be > 0"),
    (dict(num_train_epochs=-1), "num_train_epochs must be > 0"),
    (dict(per_device_train_batch_size=0), "per_device_train_batch_size must be > 0, got 0"),
    (dict(per_device_train_batch_size=-4), "per_device_train_batch_size must be > 0"),
    (dict(max_length=100_000), "max_length must be in [8, 8192]"),
])
def test_bad_settings_are_refused_with_the_field_name(values, message):
    with pytest.raises(ValueError) as e:
        RunConfig(**values)
    assert message in str(e.value)
    assert RunConfig(**{k: v for k, v in values.items() if k in ("kind", "teacher")})  # the defaults still build


def test_max_length_beyond_the_models_limit(tmp_path, teacher_dir, reviews_parquet):
    cfg = RunConfig(**TINY | dict(max_length=128), model=str(teacher_dir), data=str(reviews_parquet),
                    output_dir=str(tmp_path / "too-long"))
    with pytest.raises(ValueError, match="max_length 128 is beyond the model's limit of 64 positions; use "
                                         "--max_length 64 or less"):
        train_teacher(cfg)
    assert not list_runs(tmp_path)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("name, message", [
    ("no-such-org/no-such-model", "the Hugging Face hub is unreachable and it is not in the local cache"),
    ("/no/such/folder", "not found: expected a hub id"),
    ("../../etc", "not found"),
])
def test_unknown_model_id_or_folder_and_hub_unreachable(in_tmp_cwd, pair, name, message):
    with pytest.raises(ModelError, match=message):
        load_pair(name)
    good_prediction(pair)


def corrupt_copy(src, dst, damage):
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def truncate_weights(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.mark.parametrize("damage, message", [
    (truncate_weights, "model.safetensors is corrupt or truncated"),
    (lambda f: (f / "config.json").unlink(), "has no config.json: not a model folder"),
    (lambda f: [(f / n).unlink() for n in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
                if (f / n).exists()], "has no tokenizer files"),
])
def test_corrupted_checkpoint(tmp_path, teacher_dir, pair, damage, message):
    folder = corrupt_copy(teacher_dir, tmp_path / "broken", damage)
    with pytest.raises(ModelError, match=message):
        load_pair(str(folder))
    good_prediction(pair)
    assert load_pair(str(teacher_dir))[0].config.num_labels == 2  # the intact folder still loads


def test_teacher_and_student_with_different_tokenizers(tmp_path, tokenizer):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(VOCAB[:5] + ["film", "awful", "great"]) + "\n")
    other = transformers.BertTokenizerFast.from_pretrained(str(folder))
    with pytest.raises(ModelError, match="Teacher and student tokenizers differ .*one vocabulary"):
        check_same_tokenizer(tokenizer, other)
    check_same_tokenizer(tokenizer, tokenizer)  # the next good pair passes


# ---------------------------------------------------------------- data files
@pytest.mark.parametrize("frame, message", [
    (make_reviews(8).rename(columns={"text": "review"}), "expected a 'text' column"),
    (make_reviews(8).drop(columns=["label"]), "expected a 'label' column"),
    (make_reviews(8).assign(label=[0, 1, 2, 1, 0, 1, 0, 1]), "labels must be 0 (negative) or 1 (positive); found 2"),
    (make_reviews(8).assign(label=["pos", "neg"] * 4), "labels must be 0 (negative) or 1 (positive)"),
    (make_reviews(8).iloc[:0], "has no rows"),
])
def test_bad_data_files(tmp_path, reviews_parquet, frame, message):
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError) as e:
        load_splits(str(path))
    assert message in str(e.value)
    good_data(reviews_parquet)


# ---------------------------------------------------------------- jobs that fail or are cancelled
def test_out_of_memory_inside_training_fails_the_job_and_frees_the_slot(tmp_path, teacher_dir, reviews_parquet,
                                                                        monkeypatch):
    calls = {"n": 0}
    step = transformers.Trainer.training_step

    def oom_at_step_2(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return step(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", oom_at_step_2)
    registry = JobRegistry()
    cfg = RunConfig(**TINY, model=str(teacher_dir), data=str(reviews_parquet), output_dir=str(tmp_path / "oom"))
    job = registry.start("oom", "teacher", [Stage("teacher", train_teacher, cfg)])
    assert job.wait(120)
    snap = job.snapshot()
    assert snap.status == "failed"
    assert snap.status_line.startswith("failed: RuntimeError: CUDA out of memory") and "lower the batch size" in \
        snap.status_line
    assert registry.active() is None and not list_runs(tmp_path)
    monkeypatch.setattr(transformers.Trainer, "training_step", step)
    ok = registry.start("next", "teacher", [Stage("teacher", train_teacher, RunConfig.from_dict(
        cfg.to_dict() | {"output_dir": str(tmp_path / "ok")}))])  # the slot is free: the next job runs to the end
    assert ok.wait(120) and ok.snapshot().status == "done", ok.snapshot().status_line


@pytest.mark.parametrize("save_steps, kept", [(1000, False), (2, True)])
def test_cancelled_job_leaves_a_whole_checkpoint_or_none_and_says_which(tmp_path, teacher_dir, reviews_parquet,
                                                                        save_steps, kept):
    registry = JobRegistry()
    cfg = RunConfig(**TINY | dict(max_steps=500, save_steps=save_steps), model=str(teacher_dir),
                    data=str(reviews_parquet), output_dir=str(tmp_path / "run"))
    job = registry.start("long", "teacher", [Stage("teacher", train_teacher, cfg)])
    while job.running() and job.snapshot().step < 3:
        job.wait(0.05)
    registry.cancel(job.id)
    assert job.wait(60)
    snap = job.snapshot()
    assert snap.status == "cancelled" and not list_runs(tmp_path)  # never a half-written run
    if kept:
        assert "checkpoint-" in snap.message and "kept: resume with --resume" in snap.message
        assert [p.name for p in list_incomplete(tmp_path)] == ["run.incomplete"]
    else:
        assert "nothing was saved" in snap.message and not list_incomplete(tmp_path)
        assert not (tmp_path / "run.incomplete").exists()


def test_secrets_never_reach_a_failed_jobs_message(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef0123456789abcdef01234567")
    token = "hf_" + "A1b2C3d4" * 5
    registry = JobRegistry()

    def leaky(cfg, callbacks):
        raise RuntimeError(f"wandb login failed for key 0123456789abcdef0123456789abcdef01234567, hub token {token}")

    job = registry.start("leaky", "teacher", [Stage("teacher", leaky, None)])
    assert job.wait(10)
    snap = job.snapshot()
    assert snap.status == "failed" and "wandb login failed for key ***" in snap.status_line
    for text in (snap.status_line, snap.message, job.traceback):
        assert "0123456789abcdef" not in text and token not in text
    assert redact("nothing secret here") == "nothing secret here"
