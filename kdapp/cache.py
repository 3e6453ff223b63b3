"""Teacher-logit cache: run the teacher once per distinct input and reuse its logits in every epoch and later runs.

One file per teacher (keyed by a hash of its weights) maps a hash of each row's exact token ids to its logits, so
changing the data, the tokenizer, max_length or the truncation rule changes the keys (a miss, recomputed), never
stale logits; rows shared between runs (a sweep, a transfer set added later) are computed once.

Under torchrun (an initialised torch.distributed process group) the processes share the rows to compute out between
them and gather the whole, instead of each computing every row.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
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


def row_keys(ids: list[list[int]]) -> np.ndarray:
    """(N, 16) uint8: a 128-bit hash of each row's token ids."""
    keys = np.zeros((len(ids), 16), dtype=np.uint8)
    for i, row in enumerate(ids):
        keys[i] = np.frombuffer(hashlib.blake2b(np.asarray(row, dtype=np.int32).tobytes(), digest_size=16).digest(),
                                dtype=np.uint8)
    return keys


def _world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def computed_logits(teacher, ids: list[list[int]], pad_id: int, batch_size: int, hidden_layer: int = 0,
                    states: list | None = None) -> tuple[torch.Tensor, int]:
    """(N, num_labels) float32 logits for `ids` in order, and how many of the rows this process computed.

    Under a process group of W processes each computes every W-th row in order of length (so the shares cost
    alike) and all of them gather the whole: every process gets the same logits for W times less work.
    states, hidden_layer: as logits_from_ids fills them, in a single process only (entries stay None under W > 1)."""
    rank, world = _world()
    if world == 1:
        return torch.from_numpy(logits_from_ids(teacher, ids, pad_id, batch_size, hidden_layer=hidden_layer,
                                                states=states)), len(ids)
    mine = sorted(range(len(ids)), key=lambda i: len(ids[i]))[rank::world]
    part = logits_from_ids(teacher, [ids[i] for i in mine], pad_id, batch_size)
    shares = [None] * world
    torch.distributed.all_gather_object(shares, (mine, part))
    out = np.zeros((len(ids), part.shape[1]), dtype=np.float32)
    for rows, logits in shares:
        out[rows] = logits
    return torch.from_numpy(out), len(mine)


def teacher_logits(teacher, ids: list[list[int]], pad_id: int, batch_size: int = 64,
                   cache_dir: Path | None = CACHE_DIR, fingerprint: str | None = None, hidden_layer: int = 0,
                   states: list | None = None) -> tuple[torch.Tensor, bool]:
    """(N, num_labels) float32 logits for `ids` in order, and whether every row came from the on-disk cache.

    fingerprint names the cache file (default: a hash of the teacher's weights); pass one for a teacher whose
    state dict is not plain tensors (a quantized copy: its fp32 weights' hash plus the precision).
    states: a list of N Nones; with hidden_layer = k > 0 the rows computed here get the teacher's hidden state after
    its first k layers (logits_from_ids; kdapp/shared_prefix.py). Rows read from the file are not run: theirs stay
    None."""
    keys = row_keys(ids)
    fingerprint = fingerprint or teacher_fingerprint(teacher)
    path = Path(cache_dir) / f"{fingerprint}.safetensors" if cache_dir else None
    known: dict[bytes, torch.Tensor] = {}
    stored_keys, stored_logits = np.zeros((0, 16), np.uint8), None
    if path is not None and path.is_file():
        stored = load_file(path)
        stored_keys, stored_logits = stored["keys"].numpy(), stored["logits"]
        known = {k.tobytes(): stored_logits[i] for i, k in enumerate(stored_keys)}
    missing = [i for i, k in enumerate(keys) if k.tobytes() not in known]
    if missing:
        was_training = teacher.training
        teacher.eval()
        fresh_states = [None] * len(missing) if states is not None else None
        fresh, computed = computed_logits(teacher, [ids[i] for i in missing], pad_id, batch_size, hidden_layer,
                                          fresh_states)
        teacher.train(was_training)
        for j, i in enumerate(missing if fresh_states is not None else ()):
            states[i] = fresh_states[j]
        for j, i in enumerate(missing):
            known[keys[i].tobytes()] = fresh[j]
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            new_keys = np.concatenate([stored_keys, keys[missing]])
            new_logits = fresh if stored_logits is None else torch.cat([stored_logits, fresh])
            tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: torchrun ranks write at the same time
            save_file({"keys": torch.from_numpy(new_keys), "logits": new_logits.contiguous()}, str(tmp))
            tmp.replace(path)
        if _world()[1] > 1:  # every process has written the same file before any reads it again
            torch.distributed.barrier()
        log.info("teacher logits: %d rows from cache, %d computed (%d here)", len(ids) - len(missing), len(missing),
                 computed)
    else:
        log.info("teacher logits: all %d rows from cache", len(ids))
    return torch.stack([known[k.tobytes()] for k in keys]), not missing
