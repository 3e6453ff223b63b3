"""The cost of cuDNN's attention on a GPU *training* run (run on a CUDA machine; the inference side is measured by
benchmarks/gpu_attention.py, and kdapp's inference path already leaves cuDNN out: kdapp/inference.py,
attention_backends).

Question: cuDNN's scaled-dot-product attention builds a plan for each new batch shape (16 ms a call on an H200 in
inference), and length-grouped batches with dynamic padding bring many shapes; on shapes seen before it was faster
than the memory-efficient kernel. Does kdapp's GPU training (which still takes torch's choice) lose or gain by it,
in the first epoch (every shape new) and the second (shapes seen)?

Two copies of one student train side by side in this process on the same batches, in the same order: arm `default`
takes torch's attention choice, arm `nocudnn` runs inside kdapp's `attention_backends` (flash, memory-efficient,
math). Each batch trains both copies, the order alternating from batch to batch, each step timed with the device
synchronised: forward under the run's autocast, the KD loss against fixed soft targets (the teacher's cost is not
what is asked), backward, clipping at 1.0, fused AdamW. The batches are those of the Trainer's
`group_by_length` sampler (16 reviews, at most 256 tokens, dynamic padding), the [CLS]-only last layer as kdapp
trains. On a CPU both arms run the same path (attention_backends does nothing there): a smoke test only.

    python benchmarks/gpu_training_attention.py --model CHECKPOINT --data train.parquet --out OUT
    # the full-scale student (distilbert-base from its config: random weights, the same timings) at 512 tokens
    python benchmarks/gpu_training_attention.py --model arch:distilbert-base-uncased --tokenizer TOKENIZER_DIR \
        --max_length 512 --data train.parquet --out OUT
"""
from __future__ import annotations

import argparse
import contextlib
import time

import kdapp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)
import torch
from student_step import save_report

ARMS = ("default", "nocudnn")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="/tmp/student",
                   help="the student to train (copied twice): a checkpoint folder, or arch:NAME (random weights)")
    p.add_argument("--tokenizer", help="a tokenizer folder (needed by arch:NAME; bert-base-uncased's WordPiece, "
                                       "e.g. MiniLM's); default: the checkpoint's own")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--data", default=".gpu/train.parquet", help="IMDb parquet (read, never copied)")
    p.add_argument("--reviews", type=int, default=4000, help="the first N reviews of the seed's training split")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16",
                   help="autocast dtype of the training step (kdapp's GPU default: bf16 where supported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the table and every step's time to OUT.md and OUT.json")
    return p.parse_args()


def sdp_choice(device: str, dtype: torch.dtype, config, batch: int, length: int) -> int | None:
    """torch's scaled-dot-product pick for a training-shaped call (batch, heads, length, head size), padding mask,
    gradients on, in the calling context (None on CPU). 3 is cuDNN in torch's SDPBackend numbering."""
    if device != "cuda":
        return None
    heads = getattr(config, "num_attention_heads", None) or config.n_heads
    width = getattr(config, "hidden_size", None) or config.dim
    q = torch.randn(batch, heads, length, width // heads, device=device, dtype=dtype, requires_grad=True)
    mask = torch.zeros(batch, 1, length, length, device=device, dtype=dtype)
    return int(torch._fused_sdp_choice(q, q, q, mask, 0.0, False))


def main() -> None:
    args = parse_args()
    import numpy as np
    from transformers import AutoTokenizer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from kdapp.benchmark import ARCH_PREFIX, bench_env, build_arch
    from kdapp.cls_only import use_cls_only
    from kdapp.data import read_source, seed_split
    from kdapp.distill import distillation_loss
    from kdapp.encoding import encode
    from kdapp.inference import attention_backends, pad_batch
    from kdapp.models import load_pair

    if args.model.startswith(ARCH_PREFIX) and not args.tokenizer:
        raise SystemExit(f"{args.model} has no tokenizer: name one with --tokenizer (a bert-base-uncased WordPiece "
                         "folder, e.g. MiniLM's)")
    device = args.device
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.precision]
    train, _ = seed_split(read_source(args.data)["train"])
    rows = train.select(range(min(args.reviews, len(train))))
    students, tokenizer = {}, None
    for arm in ARMS:  # two copies, the same weights
        model, tokenizer = ((build_arch(args.model), None) if args.model.startswith(ARCH_PREFIX)
                            else load_pair(args.model))
        model.to(device).train()
        use_cls_only(model)
        students[arm] = model
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else tokenizer
    ids = encode(tokenizer, list(rows["text"]), args.max_length)
    labels = torch.tensor(rows["label"], device=device)
    soft = torch.randn(len(ids), 2, generator=torch.Generator().manual_seed(0)).to(device)
    trained = {arm: [p for p in m.parameters() if p.requires_grad] for arm, m in students.items()}
    optimizers = {arm: torch.optim.AdamW(trained[arm], lr=2e-5, fused=device == "cuda") for arm in ARMS}
    contexts = {"default": contextlib.nullcontext, "nocudnn": lambda: attention_backends(device)}
    scalers = {arm: torch.amp.GradScaler(device, enabled=amp == torch.float16) for arm in ARMS}  # fp16 only

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def step(arm: str, batch: list[int]) -> float:
        model, optimizer, scaler = students[arm], optimizers[arm], scalers[arm]
        inputs = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id or 0, device)
        sync()
        start = time.perf_counter()
        with contexts[arm](), torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(**inputs).logits
        loss, _, _ = distillation_loss(logits.float(), soft[batch], labels[batch])
        with contexts[arm]():
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trained[arm], 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        sync()
        return time.perf_counter() - start

    choices = {}
    for arm in ARMS:
        with contexts[arm]():
            choices[arm] = sdp_choice(device, amp or torch.float32, students[arm].config, args.batch_size,
                                      args.max_length)
    seconds = {arm: [[] for _ in range(args.epochs)] for arm in ARMS}
    shapes: list[set] = [set() for _ in range(args.epochs)]
    lengths = [len(x) for x in ids]
    for epoch in range(args.epochs):
        sampler = LengthGroupedSampler(args.batch_size, lengths=lengths,
                                       generator=torch.Generator().manual_seed(epoch))
        order = list(sampler)
        batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
        for n, batch in enumerate(batches):
            shapes[epoch].add((len(batch), max(lengths[i] for i in batch)))
            for arm in (ARMS if n % 2 == 0 else ARMS[::-1]):
                seconds[arm][epoch].append(step(arm, batch))
        print(f"epoch {epoch + 1}: " + ", ".join(f"{arm} {sum(seconds[arm][epoch]):.2f} s" for arm in ARMS),
              flush=True)

    env = bench_env(device)
    seen = set()
    lines = [f"{env['device_name']}, torch {env['torch']}; the student {args.model}, "
             f"{len(ids)} reviews at most {args.max_length} tokens, batches of {args.batch_size} (group_by_length), "
             f"{args.precision}; torch's "
             f"attention pick for a training call (3: cuDNN): " + ", ".join(f"{a} {choices[a]}" for a in ARMS), "",
             "| epoch | batch shapes new this epoch | default (s) | nocudnn (s) | default / nocudnn |",
             "|---|---|---|---|---|"]
    for epoch in range(args.epochs):
        new = len(shapes[epoch] - seen)
        seen |= shapes[epoch]
        d, c = (sum(seconds[arm][epoch]) for arm in ARMS)
        lines.append(f"| {epoch + 1} | {new} of {len(shapes[epoch])} | {d:.2f} | {c:.2f} | {d / c:.2f}x |")
    median = {arm: [round(float(np.median(s)) * 1e3, 2) for s in seconds[arm]] for arm in ARMS}
    lines += ["", "Median step (ms) per epoch: " + "; ".join(f"{arm} {median[arm]}" for arm in ARMS)]
    save_report(args.out, "cuDNN attention in GPU training: the student's step with and without it", lines,
                {"setup": vars(args), "env": env, "sdp_choice": choices, "seconds": seconds,
                 "median_ms": median})


if __name__ == "__main__":
    main()
