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

import argparse

# benchmarks/ is on the path: this file runs as a script
from student_step import DATA, alternate, save_report, student_step, summary

ARMS = ("model's own (0.1)", "0")
HIDDEN_DROPOUT = {ARMS[0]: None, ARMS[1]: 0.0}


def dropout_layers(step) -> dict[str, int]:
    """How many of the student's dropout layers are active (p > 0) and how many there are."""
    import torch

    ps = [m.p for m in step.student.modules() if isinstance(m, torch.nn.Dropout)]
    return {"active": sum(p > 0 for p in ps), "all": len(ps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="passes over the batches per precision")
    p.add_argument("--precision", nargs="+", choices=["bf16", "fp32"],
                   help="the student's precision (default: bf16 and fp32 where the CPU has native bf16, else fp32)")
    p.add_argument("--data", default=str(DATA), help="IMDb parquet (read, never copied)")
    p.add_argument("--out", help="also write the table and every step's time to OUT.md and OUT.json")
    args = p.parse_args()

    import kdapp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)
    import torch
    from kdapp.benchmark import bench_env
    from kdapp.inference import native_bf16
    from kdapp.memory import keep_freed_memory
    args.precision = args.precision or (["bf16", "fp32"] if native_bf16() else ["fp32"])
    env, table, detail, layers = bench_env("cpu"), {}, {}, {}
    for precision in args.precision:
        built = {arm: student_step(args.data, precision, freeze_word_embeddings=True,
                                   hidden_dropout=HIDDEN_DROPOUT[arm]) for arm in ARMS}
        steps, batches = {arm: step for arm, (step, _) in built.items()}, built[ARMS[0]][1]  # batches: seeded alike
        layers[precision] = {arm: dropout_layers(step) for arm, step in steps.items()}
        with keep_freed_memory():
            seconds = alternate(steps, batches, args.rounds, precision)
        table[precision], detail[precision] = summary(seconds), seconds
    write_report(args, env, table, detail, layers, torch.get_num_threads())


def write_report(args, env: dict, table: dict, detail: dict, layers: dict, threads: int) -> None:
    lines = [f"{env['cpu_model']}, {env['cpu_count']} CPUs ({', '.join(env['cpu_flags'])}), torch {env['torch']}, "
             f"{threads} threads; the student's step (benchmarks/student_step.py: attention dropout 0, word "
             f"embeddings frozen), each batch once with each arm, alternating; mean over {args.rounds} round(s)", "",
             "| student precision | hidden dropout 0.1 (the model's own) | 0 | speedup | dropout layers active |",
             "|---|---|---|---|---|"]
    for precision, row in table.items():
        active = " / ".join(f"{layers[precision][arm]['active']} of {layers[precision][arm]['all']}" for arm in ARMS)
        lines.append(f"| {precision} | {row['s_per_step'][ARMS[0]]:.3f} s | {row['s_per_step'][ARMS[1]]:.3f} s | "
                     f"{row['speedup']:.2f}x | {active} |")
    save_report(args.out, "Hidden dropout 0: the student's step", lines,
                {"setup": vars(args), "env": env, "table": table, "dropout_layers": layers, "seconds": detail})


if __name__ == "__main__":
    main()
