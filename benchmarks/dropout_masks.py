"""What the dtype of kdapp's bf16 dropout masks costs a KD student's training step: a bool mask vs a 0 / 1 bf16 one.

Under CPU bf16 autocast kdapp's dropout (kdapp/dropout.py) draws its masks with numpy and torch applies them: to the
hidden states (x * keep * 1 / (1 - p)) and, with attention dropout, to the attention probabilities in the forward
pass and twice in the backward pass. PyTorch multiplies a bf16 tensor by a bool mask through a per-element type
conversion; kdapp now makes the mask in bf16 from the same draws, so each multiply is a same-dtype one. The products
are the same bit for bit (checked here on one batch before timing).

The step is benchmarks/student_step.py's in bf16, with attention dropout 0.1 (the model's own) and 0 (the logit-cache
pair's recipe). Each batch runs once with each mask kind, the order alternating from batch to batch, in one process,
so the machine's drift reaches both alike; the table gives each kind's mean s/step over every round.

From the repo root, on a CPU with native bf16 (kdapp.inference.native_bf16):

    python benchmarks/dropout_masks.py                     # 3 rounds over 40 batches per attention dropout
    python benchmarks/dropout_masks.py --rounds 1 --out benchmarks/results/dropout_masks_cpu
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

from student_step import DATA, save_report, student_step  # benchmarks/ is on the path: this file runs as a script

KINDS = ("bool mask (before)", "bf16 mask (kdapp)")


@contextlib.contextmanager
def bool_masks():
    """kdapp's dropout as it was: every mask bool, whatever dtype the caller asks for."""
    import kdapp.dropout as kd
    own = kd.keep_mask
    kd.keep_mask = lambda shape, p, generator, dtype=None: own(shape, p, generator)
    try:
        yield
    finally:
        kd.keep_mask = own


def same_products(step, batch) -> bool:
    """Whether the batch's logits and the student's gradients come out bit for bit the same with either mask kind
    (the same seed: the same draws); the gradients are cleared after."""
    import torch
    results = []
    for kind in KINDS:
        torch.manual_seed(0)
        with bool_masks() if kind == KINDS[0] else contextlib.nullcontext():
            logits = step.forward_backward(batch)
        results.append([logits] + [p.grad.clone() for p in step.student.parameters() if p.grad is not None])
        step.student.zero_grad()
    return len(results[0]) == len(results[1]) and all(torch.equal(a, b) for a, b in zip(*results))


def summary(seconds: dict[str, list[float]]) -> dict[str, float]:
    """Each kind's mean s/step over its timed steps, and the bool mask's time over the bf16 mask's (> 1: faster)."""
    mean = {kind: sum(times) / len(times) for kind, times in seconds.items()}
    return {"s_per_step": {kind: round(m, 4) for kind, m in mean.items()},
            "speedup": round(mean[KINDS[0]] / mean[KINDS[1]], 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="passes over the batches per attention dropout")
    p.add_argument("--attention_dropout", type=float, nargs="+", default=[0.1, 0.0])
    p.add_argument("--data", default=str(DATA), help="IMDb parquet (read, never copied)")
    p.add_argument("--out", help="also write the table and every step's time to OUT.md and OUT.json")
    args = p.parse_args()

    import kdapp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)
    import torch
    from kdapp.benchmark import bench_env
    from kdapp.inference import native_bf16
    from kdapp.memory import keep_freed_memory
    if not native_bf16():
        sys.exit("this CPU has no native bf16: kdapp trains in fp32 here, where masks are float32 already")
    env, table, detail = bench_env("cpu"), {}, {}  # detail: every timed step's seconds, per kind
    for attention_dropout in args.attention_dropout:
        step, batches = student_step(args.data, "bf16", attention_dropout)
        if not same_products(step, batches[0]):
            sys.exit(f"attention dropout {attention_dropout}: the two mask kinds gave different products")
        print(f"attention dropout {attention_dropout}: logits and gradients the same bit for bit", flush=True)
        seconds = {kind: [] for kind in KINDS}
        with keep_freed_memory():
            for batch in batches[:4]:  # warm-up: the allocator's heap and oneDNN's kernels
                step(batch)
            for r in range(args.rounds):
                for n, batch in enumerate(batches):
                    for kind in (KINDS if (n + r) % 2 == 0 else KINDS[::-1]):
                        with bool_masks() if kind == KINDS[0] else contextlib.nullcontext():
                            start = time.perf_counter()
                            step(batch)
                            seconds[kind].append(time.perf_counter() - start)
                print(f"attention dropout {attention_dropout}: round {r + 1}: " + ", ".join(
                    f"{kind} {1e3 * sum(t) / len(t):.1f} ms" for kind, t in seconds.items()), flush=True)
        table[attention_dropout], detail[attention_dropout] = summary(seconds), seconds
    write_report(args, env, table, detail, torch.get_num_threads())


def write_report(args, env: dict, table: dict, detail: dict, threads: int) -> None:
    lines = [f"{env['cpu_model']}, {env['cpu_count']} CPUs ({', '.join(env['cpu_flags'])}), torch {env['torch']}, "
             f"{threads} threads; the bf16 student's step (benchmarks/student_step.py), each batch once with each "
             f"mask kind, alternating; mean over {args.rounds} round(s)", "",
             "| attention dropout | " + " | ".join(KINDS) + " | speedup |", "|---|---|---|---|"]
    for attention_dropout, row in table.items():
        cells = [f"{row['s_per_step'][kind]:.3f} s" for kind in KINDS]
        lines.append(f"| {attention_dropout:g} | " + " | ".join(cells) + f" | {row['speedup']:.2f}x |")
    save_report(args.out, "bf16 dropout masks: bool vs bf16", lines,
                {"setup": vars(args), "env": env, "table": table, "seconds": detail})


if __name__ == "__main__":
    main()
