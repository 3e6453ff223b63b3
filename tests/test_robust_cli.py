"""Robustness of python -m kdapp: one test per bad input of issue 5 (exit 2, the message, no traceback, and the next
good command answered), and a training process killed with SIGKILL that resumes to the same final step."""
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import VOCAB, make_reviews
from kdapp.checkpoints import list_incomplete, list_runs
from test_cli import run_main

TINY = ["--max_train_samples", "64", "--max_eval_samples", "16", "--max_length", "16", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--num_threads", "1", "--eval_strategy", "no"]


@pytest.fixture(autouse=True)
def _cwd(in_tmp_cwd):
    return in_tmp_cwd


def fails_with(argv, message):
    code, out, err = run_main(argv)
    assert code == 2, (code, out, err)
    assert message in err, err
    assert "Traceback" not in err


def next_good_command_works(model):
    code, out, err = run_main(["predict", "--model", model, "--max_length", "16", "the movie was great"])
    assert code == 0, err
    assert out.split()[0] in ("POSITIVE", "NEGATIVE")


# ---------------------------------------------------------------- reviews
@pytest.mark.parametrize("texts", [[""], ["   "], ["a good film", " \t "]])
def test_empty_or_whitespace_review(teacher_dir, texts):
    fails_with(["predict", "--model", teacher_dir, *texts], "is empty: pass the review text")
    next_good_command_works(teacher_dir)


def test_one_megabyte_review_from_stdin_is_capped_with_a_note(teacher_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("the movie was great " * 52_429 + "\nawful film\n"))
    code, out, err = run_main(["predict", "--model", teacher_dir, "--max_length", "16", "-"])
    assert code == 0, err
    assert "note: review 1 has 1,048,580 characters; only the first 100,000 are read" in err
    assert len(out.splitlines()) == 2
    next_good_command_works(teacher_dir)


def test_html_emoji_and_non_latin_reviews_are_classified(teacher_dir):
    texts = ["great<br /><br />film", "😀🎬 loved it", "Отличный фильм", "映画は素晴らしい"]
    code, out, err = run_main(["predict", "--model", teacher_dir, "--max_length", "16", *texts])
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.split()[0] in ("POSITIVE", "NEGATIVE") for line in lines)
    assert lines[2].endswith("Отличный фильм")


def test_invalid_utf8_in_a_data_file(teacher_dir, tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text,label\ncafé crème,1\n".encode("latin-1"))
    fails_with(["teacher", "--model", teacher_dir, "--data", bad, *TINY], "latin1.csv is not valid UTF-8: byte 0xe9")
    next_good_command_works(teacher_dir)


# ---------------------------------------------------------------- settings
@pytest.mark.parametrize("argv, message", [
    (["distill", "--teacher", "t", "--alpha", "-0.5"], "alpha must be in [0, 1], got -0.5"),
    (["distill", "--teacher", "t", "--alpha", "1.01"], "alpha must be in [0, 1], got 1.01"),
    (["distill", "--teacher", "t", "--temperature", "0"], "temperature must be > 0, got 0.0"),
    (["distill", "--teacher", "t", "--temperature", "-1"], "temperature must be > 0, got -1.0"),
    (["teacher", "--learning_rate", "0"], "learning_rate must be > 0, got 0.0"),
    (["teacher", "--learning_rate", "-0.001"], "learning_rate must be > 0, got -0.001"),
    (["teacher", "--num_train_epochs", "0"], "num_train_epochs must be > 0"),
    (["teacher", "--per_device_train_batch_size", "0"], "per_device_train_batch_size must be > 0, got 0"),
    (["teacher", "--per_device_train_batch_size", "-8"], "per_device_train_batch_size must be > 0, got -8"),
    (["teacher", "--max_length", "0"], "max_length must be in [8, 8192], got 0"),
])
def test_bad_settings(argv, message, teacher_dir):
    fails_with(argv, message)
    next_good_command_works(teacher_dir)


def test_max_length_beyond_the_models_limit(teacher_dir, reviews_parquet):
    fails_with(["teacher", "--model", teacher_dir, "--data", reviews_parquet, *TINY, "--max_length", "512"],
               "max_length 512 is beyond the model's limit of 64 positions")
    next_good_command_works(teacher_dir)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 training is refused on CPU only")
def test_fp16_training_on_cpu(teacher_dir, reviews_parquet, tmp_path):
    out = tmp_path / "fp16"
    fails_with(["teacher", "--model", teacher_dir, "--data", reviews_parquet, *TINY, "--mixed_precision", "fp16",
                "--output_dir", str(out)], "mixed_precision fp16 needs a CUDA GPU; on CPU use bf16")
    assert not out.exists() and not out.with_name("fp16.incomplete").exists()
    next_good_command_works(teacher_dir)


# ---------------------------------------------------------------- models
@pytest.mark.parametrize("model, message", [
    ("/no/such/model", "Model '/no/such/model' not found"),
    ("no-such-org/no-such-model", "the Hugging Face hub is unreachable"),  # HF_HUB_OFFLINE=1 in conftest
])
def test_unknown_model_or_unreachable_hub(teacher_dir, model, message):
    fails_with(["predict", "--model", model, "good film"], message)
    next_good_command_works(teacher_dir)


@pytest.mark.parametrize("damage, message", [
    ("truncate", "model.safetensors is corrupt or truncated"),
    ("config.json", "has no config.json"),
    ("tokenizer", "has no tokenizer files"),
])
def test_corrupted_checkpoint(teacher_dir, tmp_path, damage, message):
    folder = shutil.copytree(teacher_dir, tmp_path / "broken")
    if damage == "truncate":
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:1000])
    elif damage == "config.json":
        (folder / "config.json").unlink()
    else:
        for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
            (folder / f).unlink(missing_ok=True)
    fails_with(["predict", "--model", folder, "good film"], message)
    next_good_command_works(teacher_dir)


def test_teacher_and_student_with_different_tokenizers(teacher_dir, reviews_parquet, tmp_path):
    from transformers import BertTokenizerFast

    from conftest import tiny_distilbert

    student = tmp_path / "other-vocab-student"
    (tmp_path / "vocab").mkdir()
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(VOCAB[:5] + VOCAB[:4:-1]) + "\n")  # same words, reordered
    tiny_distilbert().save_pretrained(student)
    BertTokenizerFast.from_pretrained(str(tmp_path / "vocab")).save_pretrained(student)
    fails_with(["distill", "--teacher", teacher_dir, "--student", student, "--data", reviews_parquet, *TINY],
               "Teacher and student tokenizers differ")
    next_good_command_works(teacher_dir)


# ---------------------------------------------------------------- data files
@pytest.mark.parametrize("frame, message", [
    (make_reviews(8).drop(columns=["text"]), "expected a 'text' column"),
    (make_reviews(8).drop(columns=["label"]), "expected a 'label' column"),
    (make_reviews(8).assign(label=[3, 1] * 4), "labels must be 0 (negative) or 1 (positive); found 3"),
    (make_reviews(8).iloc[:0], "has no rows"),
])
def test_bad_data_files(teacher_dir, tmp_path, frame, message):
    path = tmp_path / "bad.jsonl"
    frame.to_json(path, orient="records", lines=True)
    fails_with(["teacher", "--model", teacher_dir, "--data", path, *TINY], message)
    next_good_command_works(teacher_dir)


# ---------------------------------------------------------------- a training process killed with SIGKILL
# The real CLI (kdapp.__main__.main) in a fresh interpreter; each optimizer step sleeps 0.4 s so that the kill lands
# between two intermediate checkpoints whatever the machine's load.
SLOW_CLI = """
import sys, time, transformers
step = transformers.Trainer.training_step
def slow_step(self, *args, **kwargs):
    time.sleep(0.4)
    return step(self, *args, **kwargs)
transformers.Trainer.training_step = slow_step
from kdapp.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_mid_run_leaves_no_run_and_resume_reaches_the_same_final_step(teacher_dir, reviews_parquet, tmp_path):
    root = tmp_path / "checkpoints"
    args = ["teacher", "--model", str(teacher_dir), "--data", str(reviews_parquet), *TINY, "--max_steps", "6",
            "--save_steps", "2", "--logging_steps", "1", "--max_eval_samples", "8"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.Popen([sys.executable, "-c", SLOW_CLI, *args, "--output_dir", str(root / "killed")],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240  # importing torch + transformers in a fresh process is slow on 2 busy cores
        work = root / "killed.incomplete"
        while not list(work.glob("trainer/checkpoint-*/trainer_state.json")):
            assert proc.poll() is None, f"the run ended before its first checkpoint: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "no intermediate checkpoint within 240 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()

    assert list_runs(root) == []  # nothing half-written looks like a run
    assert list_incomplete(root) == [work]
    states = work.glob("trainer/checkpoint-*/trainer_state.json")
    killed_at = max(json.loads(p.read_text())["global_step"] for p in states)
    assert 2 <= killed_at < 6

    code, out, err = run_main([*args, "--output_dir", root / "killed"])  # neither --resume nor --overwrite
    assert code == 2 and "--resume" in err
    code, out, err = run_main([*args, "--output_dir", root / "killed", "--resume"])
    assert code == 0, err
    code, out, err = run_main([*args, "--output_dir", root / "straight"])  # the same run, never interrupted
    assert code == 0, err
    steps = {p.name: json.loads((p / "metrics.json").read_text())["global_step"] for p in (root / "killed",
                                                                                            root / "straight")}
    assert steps == {"killed": 6, "straight": 6}
    assert sorted(r.name for r in list_runs(root)) == ["killed", "straight"] and list_incomplete(root) == []
