"""What --freeze_layers 1 saves a KD student's training step: every layer trained vs the embeddings and the first
layer frozen.

With the embeddings and the first encoder layer frozen, nothing below the second layer needs a gradient, so the
backward pass stops there: no backward through the first layer (its six Linear layers, attention, layer norms and
GELU) or the embeddings' layer norm, and no AdamW update or clipping for their parameters. The forward pass is the
same.

The step is benchmarks/student_step.py's (clipping, fused AdamW), two students made alike, one with --freeze_layers
1, with the logit-cache pair's recipe (--recipe pair: attention and hidden dropout 0, the word embeddings frozen) or
the app's CPU preset's (--recipe preset: the model's own dropout, 0.1, every embedding trained but in the frozen
arm). Each batch trains both, the order alternating from batch to batch, in one process, so the machine's drift
reaches both alike; the table gives each one's mean s/step over every round. What the change does to accuracy is
measured by benchmarks/accuracy.py (kd-ad0-bf16-t32-frozen-hd0-fl1 against kd-ad0-bf16-t32-frozen-hd0, and
kd-transfer-masked-windows-fastdrop-fl1 against kd-transfer-masked-windows-fastdrop; docs/accuracy.md).

From the repo root:

    python benchmarks/frozen_layers.py                  # bf16 (on a CPU with native bf16) and fp32, 3 rounds
    python benchmarks/frozen_layers.py --precision fp32 --rounds 1
    python benchmarks/frozen_layers.py --recipe preset --precision fp32
"""
from __future__ import annotations

# benchmarks/ is on the path: this file runs as a script
from student_step import ab_main, ab_report, student_step

ARMS = ("every layer trained", "embeddings and first layer frozen")
FREEZE_LAYERS = {ARMS[0]: 0, ARMS[1]: 1}
RECIPES = {"pair": dict(attention_dropout=0.0, hidden_dropout=0.0, freeze_word_embeddings=True),
           "preset": dict(attention_dropout=0.1, hidden_dropout=None, freeze_word_embeddings=False)}
RECIPE_LINES = {"pair": ": attention and hidden dropout 0, word embeddings frozen",
                "preset": ": the app's CPU preset, the model's dropout (0.1), word embeddings trained"}


def trained_parameters(step) -> int:
    """How many of the student's parameters train."""
    return sum(p.numel() for p in step.student.parameters() if p.requires_grad)


def main() -> None:
    args, env, table, detail, trained, threads = ab_main(
        __doc__, ARMS, lambda data, precision, arm, **recipe: student_step(data, precision, **recipe,
                                                                           freeze_layers=FREEZE_LAYERS[arm]),
        trained_parameters, recipes=RECIPES)
    ab_report(args, env, threads, RECIPE_LINES[args.recipe], ARMS,
              ["every layer trained", "embeddings and first layer frozen", "speedup", "parameters trained"], table,
              lambda precision: " / ".join(f"{trained[precision][arm] / 1e6:.2f}M" for arm in ARMS),
              "The embeddings and first layer frozen: the student's step",
              {"trained_parameters": trained, "seconds": detail})


if __name__ == "__main__":
    main()
