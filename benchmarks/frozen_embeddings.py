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

import argparse

# benchmarks/ is on the path: this file runs as a script
from student_step import DATA, alternate, save_report, student_step, summary  # noqa: F401  (summary: the tests')

ARMS = ("trained (default)", "frozen")


def trained_parameters(step) -> int:
    return sum(p.numel() for p in step.student.parameters() if p.requires_grad)


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
    env, table, detail, params = bench_env("cpu"), {}, {}, {}
    for precision in args.precision:
        built = {arm: student_step(args.data, precision, freeze_word_embeddings=arm == ARMS[1]) for arm in ARMS}
        steps, batches = {arm: step for arm, (step, _) in built.items()}, built[ARMS[0]][1]  # batches: seeded alike
        params[precision] = {arm: trained_parameters(step) for arm, step in steps.items()}
        with keep_freed_memory():
            seconds = alternate(steps, batches, args.rounds, precision)
        table[precision], detail[precision] = summary(seconds), seconds
    write_report(args, env, table, detail, params, torch.get_num_threads())


def write_report(args, env: dict, table: dict, detail: dict, params: dict, threads: int) -> None:
    lines = [f"{env['cpu_model']}, {env['cpu_count']} CPUs ({', '.join(env['cpu_flags'])}), torch {env['torch']}, "
             f"{threads} threads; the student's step (benchmarks/student_step.py), each batch once with each arm, "
             f"alternating; mean over {args.rounds} round(s)", "",
             "| student precision | word embeddings trained (default) | frozen | speedup | parameters trained |",
             "|---|---|---|---|---|"]
    for precision, row in table.items():
        counts = " / ".join(f"{params[precision][arm] / 1e6:.1f}M" for arm in ARMS)
        lines.append(f"| {precision} | {row['s_per_step'][ARMS[0]]:.3f} s | {row['s_per_step'][ARMS[1]]:.3f} s | "
                     f"{row['speedup']:.2f}x | {counts} |")
    save_report(args.out, "Frozen word embeddings: the student's step", lines,
                {"setup": vars(args), "env": env, "table": table, "parameters_trained": params, "seconds": detail})


if __name__ == "__main__":
    main()
