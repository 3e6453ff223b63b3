"""python -m kdapp: teacher -> distill -> evaluate end to end, predict, --help, and bad flags (exit 2 + message)."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kdapp.__main__ import main

TINY = ["--max_train_samples", "32", "--max_eval_samples", "16", "--max_length", "32", "--max_steps", "2",
        "--per_device_train_batch_size", "8", "--num_threads", "1", "--logging_steps", "1"]


def run_main(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse: --help (0) and usage errors (2)
            code = e.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, teacher_dir, reviews_parquet):
    """teacher -> distill (from-teacher) -> evaluate, as a user would type them."""
    tmp = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        teacher = run_main(["teacher", "--model", teacher_dir, "--data", reviews_parquet,
                            "--output_dir", tmp / "teacher", *TINY])
        student = run_main(["distill", "--teacher", tmp / "teacher", "--student", "from-teacher", "--alpha", "0.5",
                            "--temperature", "2", "--data", reviews_parquet, "--output_dir", tmp / "student", *TINY])
        evaluation = run_main(["evaluate", "--model", tmp / "student", "--data", reviews_parquet,
                               "--json", tmp / "eval" / "student.json"])
    return {"dir": tmp, "teacher": teacher, "student": student, "evaluate": evaluation}


def test_teacher_and_distill_commands_write_runs(pipeline):
    for name in ("teacher", "student"):
        code, out, err = pipeline[name]
        assert code == 0, err
        assert "validation: accuracy" in out and f"-> {pipeline['dir'] / name}" in out
        folder = pipeline["dir"] / name
        for f in ("model.safetensors", "config.json", "tokenizer_config.json", "run_config.json", "metrics.json"):
            assert (folder / f).is_file(), f
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["global_step"] == 2 and metrics["validation"]["n"] == 16
    run_config = json.loads((pipeline["dir"] / "student" / "run_config.json").read_text())
    assert (run_config["kind"], run_config["alpha"], run_config["student"]) == ("distill", 0.5, "from-teacher")
    assert run_config["meta"]["student_layer_map"] == [0, 2]


def test_evaluate_writes_the_json(pipeline):
    code, out, err = pipeline["evaluate"]
    assert code == 0, err
    summary = json.loads(out[: out.rindex("}") + 1])
    assert {"accuracy", "f1_weighted", "ece", "params", "size_mb", "n"} <= set(summary)
    result = json.loads((pipeline["dir"] / "eval" / "student.json").read_text())
    assert result["n"] == 240  # every row of the file, not only the validation split
    assert {"accuracy", "f1_weighted", "ece", "nll", "params", "size_mb", "samples_per_second"} <= set(result)
    assert len(result["confusion_matrix"]) == 2 and sum(map(sum, result["confusion_matrix"])) == 240
    assert len(result["reliability"]) == 15
    assert result["max_length"] == 32  # taken from the run's run_config.json
    teacher_params = json.loads((pipeline["dir"] / "teacher" / "metrics.json").read_text())["params"]
    assert 0 < result["params"] < teacher_params


def test_evaluate_max_eval_samples(pipeline, reviews_parquet):
    code, out, _ = run_main(["evaluate", "--model", pipeline["dir"] / "teacher", "--data", reviews_parquet,
                             "--max_eval_samples", "10"])
    assert code == 0 and json.loads(out)["n"] == 10


def test_predict_prints_a_label_per_text(pipeline):
    texts = ["the movie was great", "awful boring plot", "a " * 200 + "long one"]
    code, out, err = run_main(["predict", "--model", pipeline["dir"] / "student", "--max_length", "32", *texts])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    for line, text in zip(lines, texts):
        label, score, shown = line.split(maxsplit=2)
        assert label in ("POSITIVE", "NEGATIVE") and 0.5 <= float(score) <= 1.0
        assert text.startswith(shown.removesuffix("...").strip())


def test_predict_and_evaluate_read_reviews_as_the_run_did_or_whole(pipeline, reviews_parquet):
    """The run was trained at max_length 32: predict reads 32 tokens unless told otherwise; --windows reads all."""
    from kdapp.inference import predict_logits
    from kdapp.models import load_pair

    student = pipeline["dir"] / "student"
    text = " ".join(["great"] * 3 + ["the plot was"] * 30 + ["awful boring"] * 10)
    model, tokenizer = load_pair(str(student))
    for flags, windows in (([], False), (["--windows"], True)):
        code, out, err = run_main(["predict", "--model", student, *flags, text])
        p = np.exp(predict_logits(model, tokenizer, [text], 32, windows=windows)[0])
        assert code == 0 and out.split()[1] == f"{p.max() / p.sum():.3f}", (flags, out, err)
    code, out, err = run_main(["evaluate", "--model", student, "--data", reviews_parquet, "--max_eval_samples", "24",
                               "--windows"])
    assert code == 0 and json.loads(out)["reading"] == "windows"


def test_predict_reads_stdin(pipeline, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("great film\n\nbad film\n"))
    code, out, _ = run_main(["predict", "--model", pipeline["dir"] / "student", "-"])
    assert code == 0 and len(out.strip().splitlines()) == 2


@pytest.mark.parametrize("command, expected", [
    ("teacher", ["--model", "--data", "--output_dir", "--max_train_samples", "--max_eval_samples", "--max_length",
                 "--num_train_epochs", "--per_device_train_batch_size", "--learning_rate", "--seed",
                 "Use only the first N training rows"]),
    ("distill", ["--teacher", "--student", "--alpha", "--temperature", "--data", "--output_dir",
                 "Weight on CE", "from-teacher", "--cache_teacher_logits", "--transfer_data"]),
    ("evaluate", ["--model", "--data", "--max_eval_samples", "--json", "--precision"]),
    ("predict", ["--model", "TEXT", "stdin"]),
])
def test_help_explains_every_flag(command, expected):
    code, out, _ = run_main([command, "--help"])
    assert code == 0
    text = " ".join(out.split())  # argparse wraps lines
    for word in expected:
        assert word in text, word
    assert ") (default: None)" not in text  # each default named once
    if command == "teacher":
        assert "--alpha" not in text  # distill-only flags stay out of the teacher's help
    if command == "distill":
        assert "T of the KD term. (default: 2.0)" in text and "--augment_masked" in text


@pytest.mark.parametrize("argv, message", [
    (["distill", "--teacher", "t", "--alpha", "2"], "alpha must be in [0, 1], got 2.0"),
    (["distill", "--teacher", "t", "--temperature", "0"], "temperature must be > 0"),
    (["teacher", "--max_length", "4"], "max_length must be in [8, 8192]"),
    (["distill", "--alpha", "0.5"], "needs teacher="),
    (["teacher", "--model", "{teacher}", "--max_length", "32", "--data", "no/such/reviews.parquet"], "not found"),
    (["teacher", "--max_length", "abc"], "invalid int value: 'abc'"),
    (["teacher", "--alpha", "0.5"], "unrecognized arguments: --alpha"),
    (["evaluate", "--model", "m", "--precision", "int3"], "invalid choice: 'int3'"),
])
def test_bad_flag_values_exit_2_with_a_message(argv, message, tmp_path, monkeypatch, teacher_dir):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main([a.format(tmp=tmp_path, teacher=teacher_dir) for a in argv])
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_existing_output_dir_exits_2(pipeline, teacher_dir, reviews_parquet):
    code, _, err = run_main(["teacher", "--model", teacher_dir, "--data", reviews_parquet,
                             "--output_dir", pipeline["dir"] / "teacher", *TINY])
    assert code == 2 and "--overwrite" in err


def test_config_file_with_flag_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"teacher": "t", "alpha": 0.2, "temperature": 9.0}))
    code, _, err = run_main(["distill", "--config", tmp_path / "cfg.json", "--alpha", "3"])
    assert code == 2 and "alpha must be in [0, 1], got 3.0" in err  # the flag wins over the file


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: 8-30 s on this 2-core machine
def test_module_entry_point_exits_2_on_a_bad_value():
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "kdapp", "distill", "--teacher", "t", "--alpha", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "error: alpha must be in [0, 1], got 2.0" in proc.stderr
