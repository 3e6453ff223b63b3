"""The teacher and distill commands run unchanged under torchrun (2 CPU processes, gloo): one complete run each."""
import json
import os
import signal
import subprocess
import sys

import pytest

from kdapp.checkpoints import is_complete

pytestmark = pytest.mark.slow  # two torchrun launches: each starts two interpreters (about 45-90 s in all here)

TINY = ["--max_train_samples", "64", "--max_eval_samples", "16", "--max_length", "32", "--max_steps", "3",
        "--per_device_train_batch_size", "8", "--logging_steps", "1", "--save_steps", "2"]


def torchrun(args, cwd, timeout_s=300):
    """`torchrun --standalone --nproc_per_node 2 -m kdapp ...` (a free port); on a hang, kill it and its workers."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "kdapp", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, so the workers can be killed too
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun {args[0]} hung for {timeout_s} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_teacher_and_distill_under_torchrun(tmp_path, teacher_dir, reviews_parquet):
    teacher = torchrun(["teacher", "--model", teacher_dir, "--data", reviews_parquet, "--output_dir", "runs/teacher",
                        *TINY], tmp_path)
    assert teacher.returncode == 0, teacher.stderr[-3000:]
    assert "rank > 0: the main process writes the run" in teacher.stdout
    # the first layer frozen and shared with the teacher: each process gets every row's state from the teacher's
    # first layer (the cache pass is shared out, so it keeps none), and the student inside torchrun's wrapper
    # starts above it
    student = torchrun(["distill", "--teacher", "runs/teacher", "--student", "from-teacher", "--alpha", "0.5",
                        "--cache_teacher_logits", "--freeze_layers", "1", "--hidden_dropout", "0",
                        "--attention_dropout", "0", "--data", reviews_parquet, "--output_dir", "runs/student", *TINY],
                       tmp_path)
    assert student.returncode == 0, student.stderr[-3000:]

    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["student", "teacher"]  # no stray .incomplete
    for name in ("teacher", "student"):
        out = tmp_path / "runs" / name
        assert is_complete(out)
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["global_step"] == 3
        assert metrics["validation"]["n"] == 16  # rank 0 scores every validation row
        # an untrained tiny model on balanced labels: CE ~ ln 2; a loss scaled by the world size would be ~1.39
        assert metrics["train_loss"] < 1.0
    meta = json.loads((tmp_path / "runs" / "student" / "run_config.json").read_text())["meta"]
    assert meta["teacher_logits_cached"] and meta["student_layer_map"] == [0, 2]
    assert meta["shared_layers"] == 1 and meta["shared_layer_states_kept"] == meta["shared_layer_states_bottom_pass"]
    assert meta["shared_layer_states_kept"] == meta["train_rows"] == 64
    cache = tmp_path / "checkpoints" / ".cache" / "logits"
    assert len(list(cache.glob("*.safetensors"))) == 1 and not list(cache.glob("*.tmp"))
