"""One process of tests/test_cache_shared.py: joins a 2-process gloo group and asks the logit cache for its rows.

python tests/cache_worker.py RANK WORLD JOB: JOB is a folder holding teacher/ (a model folder) and ids.json (the rows' token ids and the pad id); the
process writes rank{RANK}.json there (the logits it got, and how many rows its teacher ran on)."""
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForSequenceClassification

import kdapp.cache
from kdapp.inference import logits_from_ids


def main(rank: int, world: int, job: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{job / 'group'}", rank=rank, world_size=world)
    ran = []

    def counting(model, ids, *args, **kwargs):
        ran.append(len(ids))
        return logits_from_ids(model, ids, *args, **kwargs)

    kdapp.cache.logits_from_ids = counting
    teacher = AutoModelForSequenceClassification.from_pretrained(job / "teacher")
    rows = json.loads((job / "ids.json").read_text())
    logits, hit = kdapp.cache.teacher_logits(teacher, rows["ids"], rows["pad"], batch_size=4, cache_dir=job / "cache")
    (job / f"rank{rank}.json").write_text(json.dumps({"logits": logits.tolist(), "hit": hit, "ran": ran}))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
