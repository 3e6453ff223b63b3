"""Batches side by side vs one at a time: kdapp's inference path on CPU with `workers=1` and with its default.

From the repo root, once benchmarks/accuracy.py has made checkpoints/cpu-scale/teacher:

    python benchmarks/side_by_side.py                 # 600 training reviews, fp32 / bf16 / int8, two rounds each

Each round times logits_from_ids over the same pre-tokenized reviews (256 tokens, head+tail) with one batch at a time
on every intra-op thread (workers=1) and with the batches side by side, one per thread, each single-threaded
("auto"), alternating, and prints the largest difference between their logits. docs/speed.md quotes what it
printed.
"""
from __future__ import annotations

import argparse
import time

import kdapp  # noqa: F401  (OMP_WAIT_POLICY before torch)
import numpy as np
import pandas as pd
import torch

from kdapp.encoding import encode
from kdapp.inference import batch_tokens, length_batches, logits_from_ids, prepare_model, worker_count
from kdapp.models import load_pair

TEACHER, DATA = "checkpoints/cpu-scale/teacher", "../shared/data/imdb/train.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=TEACHER)
    parser.add_argument("--reviews", type=int, default=600)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model, tokenizer = load_pair(args.model)
    texts = pd.read_parquet(DATA)["text"].iloc[: args.reviews].tolist()
    ids = encode(tokenizer, texts, 256, "head_tail", None)
    n_batches = len(length_batches([len(x) for x in ids], 64, batch_tokens("cpu")))  # as logits_from_ids makes them
    print(f"{torch.get_num_threads()} threads, {len(ids)} reviews in {n_batches} batches; side by side: "
          f"{worker_count('cpu', n_batches)} workers (seconds per pass, then reviews/s)", flush=True)
    for precision in args.precisions:
        prepared = prepare_model(model, precision, "cpu")
        logits_from_ids(prepared, ids[:16], 0, 64, workers=1)  # warm-up
        seconds = {"one at a time": [], "side by side": []}
        out = {}
        for _ in range(args.rounds):
            for label, workers in (("one at a time", 1), ("side by side", "auto")):
                start = time.perf_counter()
                out[label] = logits_from_ids(prepared, ids, 0, 64, workers=workers)
                seconds[label].append(time.perf_counter() - start)
        one, side = (float(np.mean(v)) for v in seconds.values())
        diff = float(np.abs(out["one at a time"] - out["side by side"]).max())
        print(f"  {precision}: one at a time {[round(x, 2) for x in seconds['one at a time']]} "
              f"({len(ids) / one:.1f}/s), side by side {[round(x, 2) for x in seconds['side by side']]} "
              f"({len(ids) / side:.1f}/s): {one / side:.2f}x; largest logit difference {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
