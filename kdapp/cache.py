"""Teacher-logit cache: run the teacher once over the training rows and reuse its logits in every epoch (and run).

The key hashes the teacher's weights and the exact token ids of every row, so changing the data, the tokenizer,
max_length or the truncation rule gives a new key (a miss), never stale logits.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import CHECKPOINTS_DIR
from .inference import logits_from_ids

log = logging.getLogger(__name__)

CACHE_DIR = CHECKPOINTS_DIR / ".cache" / "logits"


def teacher_fingerprint(model: torch.nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(teacher_fp: str, ids: list[list[int]]) -> str:
    h = hashlib.blake2b(teacher_fp.encode(), digest_size=16)
    for row in ids:
        h.update(len(row).to_bytes(4, "little"))
        h.update(torch.tensor(row, dtype=torch.int32).numpy().tobytes())
    return h.hexdigest()


def teacher_logits(teacher, ids: list[list[int]], pad_id: int, batch_size: int = 64,
                   cache_dir: Path | None = CACHE_DIR) -> tuple[torch.Tensor, bool]:
    """(N, num_labels) float32 logits for `ids` in order, and whether they came from the on-disk cache."""
    key = cache_key(teacher_fingerprint(teacher), ids)
    path = Path(cache_dir) / f"{key}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        logits = load_file(path)["logits"]
        if logits.shape[0] == len(ids):
            return logits, True
    was_training = teacher.training
    teacher.eval()
    logits = torch.from_numpy(logits_from_ids(teacher, ids, pad_id, batch_size))
    teacher.train(was_training)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"logits": logits.contiguous()}, str(tmp))
        tmp.replace(path)
    return logits, False
