"""benchmarks/accuracy.py's guard on its saved report: no run is trained for a report it would then refuse to write,
and a --no_report run, which writes none, is not refused (nothing is trained here: ensure_run is replaced)."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ACCURACY = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"


@pytest.fixture
def accuracy(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("kdapp_accuracy_script", ACCURACY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")  # main only checks that the data file is there before the guard
    monkeypatch.setattr(module, "DATA", str(data))
    trained = []
    monkeypatch.setattr(module, "ensure_run", lambda name, cfg, num_threads: trained.append(name))
    module.trained = trained
    return module


def _saved_report(path: Path, runs: list[str]) -> Path:
    """A report saved on another machine, listing runs whose checkpoints are not here."""
    path.with_suffix(".json").write_text(json.dumps({"rows": [{"run": r} for r in runs]}))
    return path


def _main(module, monkeypatch, *args):
    monkeypatch.setattr(sys, "argv", ["accuracy.py", *args])
    module.main()


def test_a_report_holding_runs_from_elsewhere_is_not_rewritten_and_nothing_is_trained(accuracy, monkeypatch,
                                                                                       tmp_path):
    out = _saved_report(tmp_path / "acc", ["teacher", "nokd"])
    with pytest.raises(SystemExit, match="holds 2 runs whose checkpoints are not under"):
        _main(accuracy, monkeypatch, "--checkpoints", str(tmp_path / "ckpt"), "--runs", "kd", "--out", str(out))
    assert accuracy.trained == []


def test_no_report_trains_without_touching_the_saved_report(accuracy, monkeypatch, tmp_path):
    # a new machine's first step (README): the teacher, with the committed report holding runs made elsewhere
    out = _saved_report(tmp_path / "acc", ["teacher", "nokd"])
    before = out.with_suffix(".json").read_text()
    _main(accuracy, monkeypatch, "--checkpoints", str(tmp_path / "ckpt"), "--runs", "teacher", "--no_report",
          "--out", str(out))
    assert accuracy.trained == ["teacher"]
    assert out.with_suffix(".json").read_text() == before and not out.with_suffix(".md").exists()
