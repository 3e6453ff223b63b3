"""What --hidden_dropout 0 saves a KD student's training step: the model's own hidden dropout (0.1) vs none.

A BERT student drops hidden units in 8 places per forward pass of a 3-layer student: after the embeddings, after each
layer's attention and feed-forward blocks, and before the classifier. With p > 0 each draws a mask of the tensor's
shape (kdapp's CPU dropout: numpy's PCG64, on one core) and multiplies it in, forward and backward; with p = 0 none
of that runs. The rest of the step is the same.

The step is benchmarks/student_step.py's with the logit-cache pair's recipe (attention dropout 0, the word
embeddings frozen, clipping, fused AdamW), two students made alike, one with hidden dropout 0. Each batch trains
both, the order alternating from batch to batch, in one process, so the machine's drift reaches both alike; the
table gives each one's mean s/step over every round. What the change does to accuracy is measured by
benchmarks/accuracy.py (kd-ad0-bf16-t32-frozen-hd0 against kd-ad0-bf16-t32-frozen; docs/accuracy.md).

From the repo root:

    python benchmarks/hidden_dropout.py                 # bf16 (on a CPU with native bf16) and fp32, 3 rounds
    python benchmarks/hidden_dropout.py --precision fp32 --rounds 1 --out benchmarks/results/hidden_dropout_cpu
"""
from __future__ import annotations

# benchmarks/ is on the path: this file runs as a script
from student_step import ab_main, ab_report, student_step

ARMS = ("model's own (0.1)", "0")
HIDDEN_DROPOUT = {ARMS[0]: None, ARMS[1]: 0.0}


def dropout_layers(step) -> dict[str, int]:
    """How many of the student's dropout layers are active (p > 0) and how many there are."""
    import torch

    ps = [m.p for m in step.student.modules() if isinstance(m, torch.nn.Dropout)]
    return {"active": sum(p > 0 for p in ps), "all": len(ps)}


def main() -> None:
    args, env, table, detail, layers, threads = ab_main(
        __doc__, ARMS, lambda data, precision, arm: student_step(data, precision, freeze_word_embeddings=True,
                                                                 hidden_dropout=HIDDEN_DROPOUT[arm]),
        dropout_layers)
    ab_report(args, env, threads, ": attention dropout 0, word embeddings frozen", ARMS,
              ["hidden dropout 0.1 (the model's own)", "0", "speedup", "dropout layers active"], table,
              lambda precision: " / ".join(f"{layers[precision][arm]['active']} of {layers[precision][arm]['all']}"
                                           for arm in ARMS),
              "Hidden dropout 0: the student's step", {"dropout_layers": layers, "seconds": detail})


if __name__ == "__main__":
    main()
