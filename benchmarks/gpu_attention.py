"""The cost of cuDNN's attention on kdapp's GPU inference path (run on a CUDA machine; it found the cause of a slow
one-shot fp16 `evaluate` on an H200, kdapp/inference.py: attention_backends).

Scores the first 2,000 reviews of the seed's validation split twice in one process through `logits_from_ids`
(length-sorted batches of 64, dynamic padding, 256 tokens), timing each pass: the first pass meets every batch shape
for the first time, the second meets them again. MODE `default` leaves the attention backend to the path, `nocudnn`
turns cuDNN's scaled-dot-product attention off for the whole process first, `profile` is `default` with the torch
profiler's busiest operators printed for the first pass. `sdp_choice` is torch's pick for one (64, 12, 256, 32)
attention with a padding mask outside kdapp's path (2: memory-efficient, 3: cuDNN).

    python benchmarks/gpu_attention.py default fp16 --model CHECKPOINT --data train.parquet
"""
import argparse
import contextlib
import time

import kdapp  # noqa: F401
import torch

from kdapp.data import read_source, seed_split
from kdapp.encoding import encode
from kdapp.inference import logits_from_ids, prepare_model
from kdapp.models import load_pair

def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["default", "nocudnn", "profile"])
    p.add_argument("precision", choices=["fp32", "fp16"])
    p.add_argument("--model", default="/tmp/student")
    p.add_argument("--data", default=".gpu/train.parquet")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    mode, precision = args.mode, args.precision
    if mode == "nocudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    _, val = seed_split(read_source(args.data)["train"])
    texts = val.select(range(2000))["text"]
    model, tok = load_pair(args.model)
    model = prepare_model(model, precision, "cuda")
    t = time.perf_counter()
    ids = encode(tok, list(texts), 256)
    tok_s = time.perf_counter() - t
    dt = torch.float16 if precision == "fp16" else torch.float32
    q = torch.randn(64, 12, 256, 32, device="cuda", dtype=dt)
    m = torch.zeros(64, 1, 256, 256, device="cuda", dtype=dt)
    choice = torch._fused_sdp_choice(q, q, q, m, 0.0, False)
    times = []
    for i in range(2):
        profiled = i == 0 and mode == "profile"
        prof = (torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                   torch.profiler.ProfilerActivity.CUDA])
                if profiled else contextlib.nullcontext())
        torch.cuda.synchronize()
        t = time.perf_counter()
        with prof:
            logits_from_ids(model, ids, tok.pad_token_id, 64)
        torch.cuda.synchronize()
        times.append(round(time.perf_counter() - t, 3))
        if profiled:
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print(f"DIAG mode={mode} precision={precision} sdp_choice={choice} tokenize_s={tok_s:.2f} call1_s={times[0]} "
          f"call2_s={times[1]}")


if __name__ == "__main__":
    main()
