"""What whole-tensor attention saves a float32 student's training step against kdapp's attention in blocks.

kdapp's CPU dropout path (kdapp/dropout.py) runs attention with dropout one of two ways. In blocks: one review and a
few heads at a time, sized to stay in cache, keeping a 1-byte mask and recomputing the softmax in the backward pass.
Whole: a few large matmuls and PyTorch's softmax kernels over the batch, keeping the probabilities and the mask (8
bytes per (review, head, query, key) in float32). bf16 always runs whole; float32 runs whole while that fits
kdapp.dropout.WHOLE_BYTES per layer, which this A/B decides between.

The step is benchmarks/student_step.py's in float32, kdapp's CPU default, with the model's own dropout (0.1 on the
attention probabilities too, so that attention takes kdapp's path): two students made alike, one forced into blocks
(WHOLE_BYTES 0), one at kdapp's budget. Each batch trains both, the order alternating from batch to batch, in one
process, so the machine's drift reaches both alike; the table gives each one's mean s/step over every round. Both
draw the same masks and compute the same function (tests/test_dropout.py), so accuracy does not move.

From the repo root:

    python benchmarks/fp32_attention.py                  # 3 rounds of 40 batches
    python benchmarks/fp32_attention.py --rounds 1 --out benchmarks/results/fp32_attention_cpu
"""
from __future__ import annotations

# benchmarks/ is on the path: this file runs as a script
from student_step import ab_main, ab_report, student_step

ARMS = ("blocks", "whole")


def build(data: str, precision: str, arm: str):
    """The student's step (word embeddings trained, the model's dropout), attention forced into blocks or at kdapp's
    budget."""
    import kdapp.dropout as kd

    budget = 0 if arm == "blocks" else kd.WHOLE_BYTES
    step, batches = student_step(data, precision, attention_dropout=0.1)

    def arm_step(batch: list[int]) -> None:
        kd.WHOLE_BYTES = budget  # the module's setting is shared by both students: set it for this arm's turn
        step(batch)

    arm_step.student, arm_step.budget = step.student, budget
    return arm_step, batches


def path_at_recipe(step) -> str:
    """Where the arm sends the student's attention at 16 reviews of 256 tokens (a 384-wide, 12-head MiniLM layer)."""
    import torch

    import kdapp.dropout as kd

    saved, kd.WHOLE_BYTES = kd.WHOLE_BYTES, step.budget
    try:
        heads = step.student.config.num_attention_heads
        q = torch.empty(16, heads, 256, step.student.config.hidden_size // heads)
        return kd.attention_path(q, q)
    finally:
        kd.WHOLE_BYTES = saved


def main() -> None:
    args, env, table, detail, paths, threads = ab_main(__doc__, ARMS, build, path_at_recipe, precisions=("fp32",))
    ab_report(args, env, threads, ": the model's dropout (0.1), word embeddings trained", ARMS,
              ["attention in blocks", "whole", "speedup", "path at 16 x 256 tokens"], table,
              lambda precision: " / ".join(paths[precision][arm] for arm in ARMS),
              "Whole-tensor float32 attention: the student's step", {"paths": paths, "seconds": detail})


if __name__ == "__main__":
    main()
