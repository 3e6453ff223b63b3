"""Candidate levers on the KD student's bf16 training step that kdapp does not use, each timed against kdapp's step.

The logit-cache pair (benchmarks/speed.py, kdapp_2ep_cache*) needs the student's epoch at or below about 0.75 of
the teacher's to reach 1.4x (docs/speed.md). These are the levers tried for it that kdapp did not take, kept so the
evidence can be rerun:

- `compile`: `torch.compile(student.forward, dynamic=True)` (inductor, one graph: no breaks on kdapp's attention).
  Its first step, the compilation, is reported apart; the warm-up absorbs it.
- `fused_qkv`: the query, key and value projections of every full layer as one Linear over the concatenated
  weights (the same parameters and the same logits), split into q, k, v as strided views.
- `bf16_layer_norm`: LayerNorm under bf16 autocast takes and returns bf16 (fp32 inside, fp32 weights) instead of
  autocast's fp32 in and out: no activation casts, but the residual stream is rounded to bf16 (a numerics change).
- `halves`: each batch's rows in two halves trained side by side on two threads, each single-threaded (as kdapp's
  inference and its on-the-fly teacher run), their losses weighted by their share of rows, so the gradients sum to
  the batch's; clipping and AdamW then run once on both threads.
- `sdpa`: PyTorch's fused CPU attention (flash-style, forward and backward) instead of kdapp's bf16 attention.

Each lever is a pair of students made alike (benchmarks/student_step.py: the cache pair's recipe, attention dropout
0, the word embeddings frozen, hidden dropout 0); each batch trains both, the order alternating, in one process,
so the machine's drift reaches both alike; mean s/step over every round.

    python benchmarks/step_levers.py --out benchmarks/results/step_levers_cpu_amx
    python benchmarks/step_levers.py --levers fused_qkv halves --rounds 1
"""
from __future__ import annotations

import argparse
import time
import types

# benchmarks/ is on the path: this file runs as a script
from student_step import DATA, alternate, save_report, student_step, summary

LEVERS = ("compile", "fused_qkv", "bf16_layer_norm", "halves", "sdpa")


def fused_qkv_forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
    """BertSelfAttention.forward with one projection for q, k and v (a self-attention encoder layer)."""
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert import modeling_bert

    batch, length, _ = hidden_states.shape
    weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
    bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
    qkv = torch.nn.functional.linear(hidden_states, weight, bias)
    q, k, v = qkv.view(batch, length, 3, -1, self.attention_head_size).permute(2, 0, 3, 1, 4)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                   modeling_bert.eager_attention_forward)
    out, weights = attend(self, q, k, v, attention_mask, dropout=self.dropout.p if self.training else 0.0,
                          scaling=self.scaling, **kwargs)
    return out.reshape(batch, length, -1).contiguous(), weights


def bf16_layer_norm_class():
    import torch

    class Bf16LayerNorm(torch.nn.LayerNorm):
        """LayerNorm that keeps autocast's bf16: bf16 in and out, fp32 inside and in its weights."""

        def forward(self, x):
            if torch.is_autocast_enabled("cpu") and x.dtype == torch.float32:
                x = x.to(torch.get_autocast_dtype("cpu"))
            with torch.autocast("cpu", enabled=False):
                return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    return Bf16LayerNorm


def halves_step(step):
    """A step that trains a batch's two halves side by side (kdapp.inference's threads), then clips and steps."""
    import torch
    from kdapp.inference import _side_by_side

    def run(batch: list[int]) -> None:
        half = len(batch) // 2
        parts = [batch[:half], batch[half:]]
        _side_by_side(lambda k: step.forward_backward(parts[k], len(parts[k]) / len(batch)), [0, 1], 2,
                      grad_mode=torch.enable_grad)
        torch.nn.utils.clip_grad_norm_(step.trained, 1.0)
        step.optimizer.step()
        step.optimizer.zero_grad()

    run.student = step.student
    return run


def with_lever(step, lever: str, seconds: dict):
    """kdapp's step changed by one lever (in place where it can be); seconds["first_step"] gets compile's first
    step."""
    import torch

    student = step.student
    if lever == "compile":
        student.forward = torch.compile(student.forward, dynamic=True)

        def timed(batch):
            start = time.perf_counter()
            step(batch)
            seconds.setdefault("first_step", round(time.perf_counter() - start, 2))  # the first call compiles
        return timed
    if lever == "fused_qkv":
        for layer in student.bert.encoder.layer[:-1]:  # the last one runs at [CLS] only (kdapp/cls_only.py)
            attention = layer.attention.self
            attention.forward = types.MethodType(fused_qkv_forward, attention)
        return step
    if lever == "bf16_layer_norm":
        cls = bf16_layer_norm_class()
        for module in student.modules():
            if type(module) is torch.nn.LayerNorm:
                module.__class__ = cls
        return step
    if lever == "halves":
        return halves_step(step)
    if lever == "sdpa":
        student.set_attn_implementation("sdpa")
        return step
    raise ValueError(lever)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--levers", nargs="+", choices=LEVERS, default=list(LEVERS))
    p.add_argument("--rounds", type=int, default=3, help="passes over the batches per lever")
    p.add_argument("--data", default=str(DATA), help="IMDb parquet (read, never copied)")
    p.add_argument("--out", help="also write the table and every step's time to OUT.md and OUT.json")
    args = p.parse_args()

    import kdapp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)
    import torch
    from kdapp.benchmark import bench_env
    from kdapp.memory import keep_freed_memory

    def build():
        return student_step(args.data, "bf16", freeze_word_embeddings=True, hidden_dropout=0.0)

    env, table, detail, extra = bench_env("cpu"), {}, {}, {}
    for lever in args.levers:
        (plain, batches), (other, _) = build(), build()
        extra[lever] = {}
        steps = {"kdapp": plain, lever: with_lever(other, lever, extra[lever])}
        with keep_freed_memory():
            seconds = alternate(steps, batches, args.rounds, lever)
        table[lever], detail[lever] = summary(seconds), seconds
    lines = [f"{env['cpu_model']}, {env['cpu_count']} CPUs ({', '.join(env['cpu_flags'])}), torch {env['torch']}, "
             f"{torch.get_num_threads()} threads; the bf16 student's step (benchmarks/student_step.py: attention "
             f"dropout 0, word embeddings frozen, hidden dropout 0), each batch once with each arm, alternating; "
             f"mean over {args.rounds} round(s)", "",
             "| lever | kdapp's step | with the lever | kdapp / lever (> 1: the lever is faster) | note |",
             "|---|---|---|---|---|"]
    for lever, row in table.items():
        note = f"first step (compiling) {extra[lever]['first_step']} s" if "first_step" in extra[lever] else ""
        lines.append(f"| {lever} | {row['s_per_step']['kdapp']:.3f} s | {row['s_per_step'][lever]:.3f} s | "
                     f"{row['speedup']:.2f}x | {note} |")
    save_report(args.out, "Levers on the student's bf16 step that kdapp does not take", lines,
                {"setup": vars(args), "env": env, "table": table, "extra": extra, "seconds": detail})


if __name__ == "__main__":
    main()
