"""What OpenMP's wait policy costs a KD student's training step on this machine, idle and with another process busy.

`import kdapp` sets OMP_WAIT_POLICY=PASSIVE (STACK_NOTES 0: on a loaded 2-core machine libgomp's default spin-wait
cost 8-16 ms per op). A PASSIVE thread sleeps as soon as a parallel region ends, so the next region must wake it
first; a training step runs hundreds of regions. This script times the same student step under PASSIVE, under
GOMP_SPINCOUNT=300000 (libgomp's default spin, then sleep) and under ACTIVE (spin forever), in fresh processes
(libgomp reads its variables once, when torch loads), the order alternating every round, on an idle machine and
again with one busy-looping process beside it (`--busy 0` skips that half).

The step is the one the speed benchmark's logit-cache pair trains with (benchmarks/student_step.py): a 3-layer
student made from the teacher, kdapp's CPU dropout, attention dropout 0, last layer at [CLS] only, 16 reviews of
../shared/data/imdb/train.parquet in length-grouped batches (at most 256 tokens), the KD loss against fixed soft
targets, gradients clipped at 1.0, fused AdamW; under bf16 autocast with --precision bf16.

From the repo root (the teacher: checkpoints/cpu-scale/teacher, else the pip-installed all-MiniLM-L6-v2; the
step's time does not depend on the weights):

    python benchmarks/omp_wait.py                      # bf16 where native, 3 rounds, idle and busy
    python benchmarks/omp_wait.py --precision fp32 --rounds 2 --busy 0
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "imdb" / "train.parquet"
PASSIVE = "PASSIVE (kdapp)"
# policy name -> environment for libgomp (None: the variable removed). GOMP_SPINCOUNT, when set, is how many times
# an idle thread checks for work before it sleeps, whatever OMP_WAIT_POLICY says; 300000 is libgomp's own default
# (OMP_WAIT_POLICY unset), a few ms here: the way to spin in a process that imports kdapp (PASSIVE by default)
POLICIES = {
    PASSIVE: {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": None},
    "GOMP_SPINCOUNT=300000": {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "300000"},
    "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": None},
}


def worker(args) -> dict:
    """One process: time the student's step (after warm-up) under the wait policy its environment gave libgomp."""
    policy = {key: os.environ.get(key, "unset") for key in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    import torch  # first: libgomp reads its variables now, before kdapp's default could set one

    import kdapp  # noqa: F401
    from kdapp.memory import keep_freed_memory
    from student_step import student_step  # benchmarks/ is on the path: this file runs as a script

    step, batches = student_step(args.data, args.precision)
    with keep_freed_memory():
        for batch in batches[:args.warmup]:
            step(batch)
        start, timed = time.perf_counter(), batches[args.warmup:args.warmup + args.steps]
        for batch in timed:
            step(batch)
        seconds = (time.perf_counter() - start) / len(timed)
    return {"s_per_step": seconds, "threads": torch.get_num_threads()} | policy


def policy_env(policy: str, base: dict[str, str]) -> dict[str, str]:
    """The worker's environment: base with the policy's libgomp variables set or removed (whatever base had)."""
    env = dict(base, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    for key, value in POLICIES[policy].items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def run_worker(args, policy: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--precision", args.precision, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--data", str(args.data)]
    out = subprocess.run(cmd, env=policy_env(policy, dict(os.environ)), cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def summary(results: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, dict[str, float]]]:
    """condition -> policy -> median s/step over the rounds, and PASSIVE's median over it (> 1: faster)."""
    out = {}
    for condition, by_policy in results.items():
        base = statistics.median(by_policy[PASSIVE])
        out[condition] = {name: {"s_per_step": round(statistics.median(times), 4),
                                 "speedup_vs_passive": round(base / statistics.median(times), 3)}
                          for name, times in by_policy.items()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="the student's precision (default: bf16 where the CPU has native bf16, else fp32)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per condition, the policies' order alternating")
    p.add_argument("--steps", type=int, default=30, help="timed steps per process")
    p.add_argument("--warmup", type=int, default=6, help="untimed steps first")
    p.add_argument("--busy", type=int, choices=(0, 1), default=1, help="1: also time with a busy-looping process")
    p.add_argument("--data", default=str(DATA), help="IMDb parquet (read, never copied)")
    p.add_argument("--out", help="also write the table and every round to OUT.md and OUT.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.precision is None:
        from kdapp.inference import native_bf16
        args.precision = "bf16" if native_bf16() else "fp32"
    from kdapp.benchmark import bench_env
    env = bench_env("cpu")
    names = list(POLICIES)
    results: dict[str, dict[str, list[float]]] = {}
    runs = []  # every worker's own report: its libgomp variables as torch loaded them, threads, s/step
    for condition in ("idle", "busy")[:1 + args.busy]:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy" else None
        try:
            for r in range(args.rounds):
                for policy in (names if r % 2 == 0 else names[::-1]):
                    run = run_worker(args, policy)
                    runs.append({"condition": condition, "round": r + 1, "policy": policy} | run)
                    seconds = run["s_per_step"]
                    results.setdefault(condition, {}).setdefault(policy, []).append(seconds)
                    print(f"{condition:4s} round {r + 1}  {policy:22s} {seconds:.4f} s/step", flush=True)
        finally:
            if busy is not None:
                busy.kill()
    write_report(args, env, results, runs)


def write_report(args, env: dict, results: dict[str, dict[str, list[float]]], runs: list[dict]) -> None:
    """Print the table of medians; with --out also write it to OUT.md, and every worker's run to OUT.json (env is
    this driver's; each run names the variables its own process started with)."""
    from student_step import BATCH, save_report  # benchmarks/ is on the path: this file runs as a script
    medians, names = summary(results), list(POLICIES)
    lines = [f"{env['cpu_model']}, {env['cpu_count']} CPUs ({', '.join(env['cpu_flags'])}), torch {env['torch']}, "
             f"{env['threads']} threads; student step in {args.precision}, batch {BATCH}, {args.steps} timed steps "
             f"per process after {args.warmup}; median over {args.rounds} rounds, the order alternating", "",
             "| machine | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for condition, by_policy in medians.items():
        cells = [f"{by_policy[n]['s_per_step']:.3f} s ({by_policy[n]['speedup_vs_passive']:.2f}x)" for n in names]
        what = "idle" if condition == "idle" else "one busy-looping process beside it"
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    save_report(args.out, "OpenMP wait policy and a KD student's training step", lines,
                {"setup": vars(args), "env": env, "rounds": results, "runs": runs, "median": medians},
                "(x: PASSIVE's time over the policy's; above 1 is faster than PASSIVE)")


if __name__ == "__main__":
    main()
