"""The logit cache under torchrun: the processes share the cache pass out and each gets every row's logits."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from conftest import make_reviews
from kdapp.cache import teacher_logits
from kdapp.encoding import encode

pytestmark = pytest.mark.slow  # starts two interpreters (about 10-20 s here)

WORKER = Path(__file__).with_name("cache_worker.py")


def test_two_processes_share_the_cache_pass_and_get_every_rows_logits(teacher_dir, tokenizer, tmp_path):
    ids = encode(tokenizer, make_reviews(21)["text"].tolist(), 32)  # an odd count: shares of 11 and 10
    shutil.copytree(teacher_dir, tmp_path / "teacher")
    (tmp_path / "ids.json").write_text(json.dumps({"ids": ids, "pad": tokenizer.pad_token_id}))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(rank), "2", str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
    got = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    assert sorted(sum(g["ran"]) for g in got) == [10, 11]  # each ran on its share, not on all 21 rows
    assert got[0]["logits"] == got[1]["logits"] and not got[0]["hit"]  # both gathered the same whole
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    alone, _ = teacher_logits(teacher, ids, tokenizer.pad_token_id, batch_size=4, cache_dir=tmp_path / "alone")
    assert torch.allclose(torch.tensor(got[0]["logits"]), alone, atol=1e-5)  # what one process computes
    again, hit = teacher_logits(teacher, ids, tokenizer.pad_token_id, cache_dir=tmp_path / "cache")
    assert hit and torch.equal(again, torch.tensor(got[0]["logits"]))  # the file holds every row
    assert not list((tmp_path / "cache").glob("*.tmp"))
