"""What --share_frozen_layers saves a KD student's training step: the student's frozen embeddings and first layer
computed by itself vs taken from the teacher.

A student made from the teacher with --freeze_layers 1 and no dropout keeps the teacher's embeddings and first layer
as they are, so what they compute for a batch is what the teacher's own compute for it: the teacher's hidden state
after its first layer. Taken from the teacher (on the fly the teacher computes it anyway; with the logit cache its
pass keeps it), the student's forward starts at its second layer (kdapp/shared_prefix.py). The backward pass is the
same: it already stopped above the frozen layers.

The step is benchmarks/student_step.py's (clipping, fused AdamW) with the logit-cache pair's recipe (attention and
hidden dropout 0, every embedding and the first layer frozen), two students made alike. The teacher's states for
every batch are computed before the timing (what it costs the teacher is nothing on the fly, and its cache pass once).
Each batch trains both, the order alternating from batch to batch, in one process, so the machine's drift reaches
both alike; the table gives each one's mean s/step over every round. The same training up to float rounding: the
states are the teacher's float32 ones where the bf16 student's own layer would have rounded to bf16 (its accuracy:
benchmarks/accuracy.py kd-ad0-bf16-t32-frozen-hd0-fl1-shared against kd-ad0-bf16-t32-frozen-hd0-fl1).

From the repo root:

    python benchmarks/shared_layers.py                  # bf16 (on a CPU with native bf16) and fp32, 3 rounds
    python benchmarks/shared_layers.py --precision fp32 --rounds 1
"""
from __future__ import annotations

# benchmarks/ is on the path: this file runs as a script
from student_step import ab_main, ab_report, student_step

ARMS = ("computed by the student", "taken from the teacher")
RECIPE = dict(attention_dropout=0.0, hidden_dropout=0.0, freeze_word_embeddings=True, freeze_layers=1)


def build(data, precision: str, arm: str):
    """(step, batches) for one arm: the second arm's student starts from the teacher's states for each batch."""
    step, batches = student_step(data, precision, **RECIPE)
    if arm == ARMS[0]:
        step.shared = 0
        return step, batches
    import torch

    from kdapp.shared_prefix import shared_layers, starting_at

    teacher = step.teacher.eval()
    shared = shared_layers(teacher, step.student)
    with torch.no_grad():
        states = {tuple(batch): teacher(**step.inputs(batch), output_hidden_states=True).hidden_states[shared]
                  for batch in batches}
    student, forward, current = step.student, step.student.forward, {}

    def started(*args, **kwargs):
        with starting_at(student, current["states"], shared):
            return forward(*args, **kwargs)

    student.forward = started

    def shared_step(batch: list[int]) -> None:
        current["states"] = states[tuple(batch)]
        step(batch)

    shared_step.student, shared_step.shared = student, shared
    return shared_step, batches


def main() -> None:
    args, env, table, detail, shared, threads = ab_main(__doc__, ARMS, build, lambda step: step.shared,
                                                        precisions=("bf16", "fp32"))
    ab_report(args, env, threads, ": attention and hidden dropout 0, the embeddings and first layer frozen", ARMS,
              ["computed by the student", "taken from the teacher", "speedup", "layers taken"], table,
              lambda precision: str(shared[precision][ARMS[1]]),
              "The student's frozen first layer taken from the teacher: the student's step",
              {"shared_layers": shared, "seconds": detail})


if __name__ == "__main__":
    main()
