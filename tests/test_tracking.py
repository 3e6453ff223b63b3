"""W&B: offline without a key, never a prompt, and one W&B run per kdapp run even in one process."""
import os

import pytest

from kdapp import RunConfig, train_teacher
from kdapp.tracking import report_to

wandb = pytest.importorskip("wandb")


def test_no_tracking_unless_asked():
    assert report_to("none") == []


def test_two_runs_in_one_process_land_in_two_offline_wandb_runs(tmp_path, monkeypatch, teacher_dir, reviews_parquet):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    for name in ("first", "second"):
        cfg = RunConfig(model=str(teacher_dir), data=str(reviews_parquet), max_length=16, max_steps=2,
                        max_eval_samples=16, eval_strategy="no", report_to="wandb", run_name=name,
                        output_dir=str(tmp_path / name))
        assert train_teacher(cfg).status == "done"
        assert wandb.run is None  # finished, so the next run starts a new one
    runs = sorted(p.name for p in (tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs


def test_offline_mode_is_chosen_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert report_to("wandb") == ["wandb"]
    assert os.environ["WANDB_MODE"] == "offline"
