"""What --freeze_word_embeddings saves a KD student's training step: the word embeddings trained vs frozen.

A 3-layer student made from the MiniLM teacher has 17.4M parameters, 11.7M of them in its word embeddings (30,522 x
384). Trained, they cost every step a dense gradient (zeroed, then the batch's rows added), their share of the
gradient-norm clipping and a fused AdamW update of all 11.7M (AdamW moves every row, not only the batch's). Frozen,
none of that runs; the rest of the step is the same.

The step is benchmarks/student_step.py's (the logit-cache pair's recipe: attention dropout 0, clipping, fused AdamW),
two students made alike, one with its word embeddings frozen. Each batch trains both, the order alternating from
batch to batch, in one process, so the machine's drift reaches both alike; the table gives each one's mean s/step
over every round. What freezing does to accuracy is measured by benchmarks/accuracy.py (kd-ad0-bf16-t32-frozen
against kd-ad0-bf16-t32; docs/accuracy.md).

From the repo root:

    python benchmarks/frozen_embeddings.py                 # bf16 (on a CPU with native bf16) and fp32, 3 rounds
    python benchmarks/frozen_embeddings.py --precision fp32 --rounds 1 --out benchmarks/results/frozen_embeddings_cpu
"""
from __future__ import annotations

# benchmarks/ is on the path: this file runs as a script
from student_step import ab_main, ab_report, student_step, summary  # noqa: F401  (summary: the tests')

ARMS = ("trained (default)", "frozen")


def trained_parameters(step) -> int:
    return sum(p.numel() for p in step.student.parameters() if p.requires_grad)


def main() -> None:
    args, env, table, detail, params, threads = ab_main(
        __doc__, ARMS, lambda data, precision, arm: student_step(data, precision, freeze_word_embeddings=arm == ARMS[1]),
        trained_parameters)
    ab_report(args, env, threads, "", ARMS,
              ["word embeddings trained (default)", "frozen", "speedup", "parameters trained"], table,
              lambda precision: " / ".join(f"{params[precision][arm] / 1e6:.1f}M" for arm in ARMS),
              "Frozen word embeddings: the student's step", {"parameters_trained": params, "seconds": detail})


if __name__ == "__main__":
    main()
