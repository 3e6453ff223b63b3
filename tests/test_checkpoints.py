"""Runs on disk: written whole or not at all, loadable with Auto* classes, listed only when complete."""
import json
import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import tiny_bert
from kdapp.checkpoints import (INCOMPLETE, is_complete, last_trainer_checkpoint, list_incomplete, list_runs,
                               load_run_info, publish, save_run, work_dir)
from kdapp.models import load_pair

TEXTS = ["the movie was great", "awful boring plot and the acting was bad"]


def _save(path, tokenizer, seed=0, metrics=None, **kw):
    model = tiny_bert(layers=2, seed=seed).eval()
    cfg = {"kind": "teacher", "model": "tiny", "alpha": 0.5}
    return model, save_run(model, tokenizer, path, cfg, metrics or {"validation": {"accuracy": 0.5}}, **kw)


def _logits(model, tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_save_then_load_gives_the_same_logits(tmp_path, tokenizer):
    model, out = _save(tmp_path / "runs" / "t1", tokenizer)
    assert out == tmp_path / "runs" / "t1" and is_complete(out)
    assert not work_dir(out).exists()  # the staging folder is gone
    assert {"config.json", "model.safetensors", "run_config.json", "metrics.json"} <= {f.name for f in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.glob("*.tmp"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == len(tokenizer)
    assert torch.allclose(_logits(model, tokenizer), _logits(reloaded, tok), atol=1e-6)
    loaded, loaded_tok = load_pair(str(out))
    assert torch.allclose(_logits(model, tokenizer), _logits(loaded, loaded_tok), atol=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["validation"] == {"accuracy": 0.5} and metrics["size_mb"] > 0
    assert json.loads((out / "run_config.json").read_text())["model"] == "tiny"


def test_list_runs_skips_incomplete_and_partial_folders(tmp_path, tokenizer):
    root = tmp_path / "checkpoints"
    _save(root / "older", tokenizer)
    os.utime(root / "older", (1, 1))
    _save(root / "newer", tokenizer, seed=1, metrics={"validation": {"accuracy": 0.9}})
    _save(root / "broken", tokenizer)
    (root / "broken" / "metrics.json").unlink()
    _save(root / "half", tokenizer)
    os.replace(root / "half", root / f"half{INCOMPLETE}")
    _save(root / ".hidden", tokenizer)
    (root / "notes.txt").write_text("not a run")
    runs = list_runs(root)
    assert [r.name for r in runs] == ["newer", "older"]
    assert runs[0].metrics["validation"]["accuracy"] == 0.9 and runs[0].kind == "teacher"
    assert list_runs(tmp_path / "missing") == []


def test_run_kinds(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "run_config.json").write_text(json.dumps({"kind": "distill", "alpha": 1.0}))
    assert load_run_info(tmp_path / "r").kind == "nokd"
    (tmp_path / "r" / "run_config.json").write_text(json.dumps({"kind": "distill", "alpha": 0.5}))
    assert load_run_info(tmp_path / "r").kind == "kd"
    assert load_run_info(tmp_path / "nothing").metrics == {}


def test_existing_run_is_not_replaced_without_overwrite(tmp_path, tokenizer):
    first, out = _save(tmp_path / "run", tokenizer, seed=0)
    with pytest.raises(FileExistsError, match="--overwrite"):
        _save(out, tokenizer, seed=1)
    assert torch.allclose(_logits(AutoModelForSequenceClassification.from_pretrained(out), tokenizer),
                          _logits(first, tokenizer))
    second, _ = _save(out, tokenizer, seed=1, overwrite=True)
    assert torch.allclose(_logits(AutoModelForSequenceClassification.from_pretrained(out), tokenizer),
                          _logits(second, tokenizer))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no .old or .incomplete left behind


def test_publish_refuses_an_existing_folder(tmp_path):
    (tmp_path / "staging").mkdir()
    (tmp_path / "final").mkdir()
    with pytest.raises(FileExistsError):
        publish(tmp_path / "staging", tmp_path / "final", overwrite=False)
    assert (tmp_path / "staging").is_dir()


def test_a_failed_save_leaves_no_folder_under_the_final_name(tmp_path, tokenizer, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tokenizer, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        _save(tmp_path / "run", tokenizer)
    assert not (tmp_path / "run").exists()
    assert list_runs(tmp_path) == []
    assert (tmp_path / f"run{INCOMPLETE}").is_dir()  # the half-written staging folder is visibly incomplete


def test_a_failed_overwrite_keeps_the_old_run(tmp_path, tokenizer, monkeypatch):
    first, out = _save(tmp_path / "run", tokenizer)
    monkeypatch.setattr("kdapp.checkpoints.write_json",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("killed mid-way")))
    with pytest.raises(OSError, match="killed"):
        _save(out, tokenizer, seed=1, overwrite=True)
    assert is_complete(out)
    assert torch.allclose(_logits(AutoModelForSequenceClassification.from_pretrained(out), tokenizer),
                          _logits(first, tokenizer))


def test_last_trainer_checkpoint_and_incomplete_runs(tmp_path):
    work = tmp_path / f"run{INCOMPLETE}"
    for step in (2, 10, 4):
        (work / "trainer" / f"checkpoint-{step}").mkdir(parents=True)
        (work / "trainer" / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (work / "trainer" / "checkpoint-12").mkdir()  # no trainer_state.json: being written
    assert last_trainer_checkpoint(work).name == "checkpoint-10"
    (tmp_path / f"other{INCOMPLETE}").mkdir()  # nothing to resume from
    assert list_incomplete(tmp_path) == [work]
    assert last_trainer_checkpoint(tmp_path / "none") is None
