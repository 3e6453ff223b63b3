"""benchmarks/accuracy.py's runs, many at once on one machine (a GPU: a 3-layer student at batch 16 leaves it mostly
idle, so several runs share it), then one report.

The teachers train side by side first (every student needs them); then the students are dealt round-robin, in the
order given, over --procs processes of `accuracy.py --runs ... --no_report`, so the first runs named finish first.
With --stop_after the runs still going that many seconds after the start are stopped (their folders stay incomplete:
the report skips them, and a later call trains them again); the report is written either way.

    # the GPU table (README, "On a GPU"): the five teachers, then GPU_STUDENTS over 8 processes, then the report
    python benchmarks/accuracy_parallel.py --procs 8 --num_threads 2 --out benchmarks/results/accuracy_gpu_h200
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# the labelled-only recipes and their same-rows controls (2, 5, 3 epochs; three masked copies), then the transfer
# sets, three seeds each; in priority order: dealt round-robin, so every process starts with the first ones
GPU_STUDENTS = """
    nokd nokd-masked-windows kd-masked-windows-cfv nokd-s43 nokd-masked-windows-s43 kd-masked-windows-cfv-s43
    nokd-s44 nokd-masked-windows-s44 kd-masked-windows-cfv-s44 kd-masked-windows-cfv-5ep nokd-masked-windows-5ep
    kd-masked-windows-cfv-5ep-s43 nokd-masked-windows-5ep-s43 kd-masked-windows-cfv-5ep-s44
    nokd-masked-windows-5ep-s44 kd-masked3-windows-cfv nokd-masked3-windows kd-masked3-windows-cfv-s43
    nokd-masked3-windows-s43 kd-masked3-windows-cfv-s44 nokd-masked3-windows-s44 kd-masked-windows-cfv-3ep
    nokd-masked-windows-3ep kd-masked-windows-cfv-3ep-s43 nokd-masked-windows-3ep-s43 kd-masked-windows-cfv-3ep-s44
    nokd-masked-windows-3ep-s44 kd-transfer-masked-windows kd-transfer-masked-windows-s43
    kd-transfer-masked-windows-s44 kd-masked-windows kd-masked-windows-s43 kd-transfer-all-masked-windows
    kd-transfer-all-masked-windows-s43 kd-transfer-all-masked-windows-s44 kd-masked-windows-s44
""".split()


def launch(names: list[str], args: argparse.Namespace, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE / "accuracy.py"), "--runs", *names, "--no_report", "--out", args.out,
           "--num_threads", str(args.num_threads), "--checkpoints", args.checkpoints]
    with log.open("w") as f:  # a process group of its own: stopping it stops its dataloader workers too
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def run_all(groups: list[list[str]], args: argparse.Namespace, logs: Path, deadline: float | None) -> bool:
    """Each group's runs in a process of its own, all at once; True when every process succeeded."""
    procs = [(g, launch(g, args, logs / f"{i:02d}-{g[0]}.log")) for i, g in enumerate(groups) if g]
    while any(p.poll() is None for _, p in procs):
        if deadline is not None and time.time() > deadline:
            for g, p in procs:
                if p.poll() is None:
                    print(f"stopping {' '.join(g)} (time is up)", flush=True)
                    os.killpg(p.pid, signal.SIGTERM)
            for _, p in procs:
                p.wait()
            break
        time.sleep(2)
    for g, p in procs:
        print(f"exit {p.returncode}: {' '.join(g)}", flush=True)
    return all(p.returncode == 0 for _, p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmarks/accuracy.py's runs, many at once, then one report")
    parser.add_argument("--teachers", nargs="*", default=["teacher", *(f"teacher-fold{k}" for k in range(4))])
    parser.add_argument("--students", nargs="+", default=GPU_STUDENTS, help="in priority order")
    parser.add_argument("--procs", type=int, default=8, help="student processes at once")
    parser.add_argument("--num_threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--stop_after", type=float, help="seconds from the start: stop the runs still going then")
    parser.add_argument("--checkpoints", default="checkpoints/cpu-scale", help="the runs' folders")
    parser.add_argument("--logs", help="one log per process (default: CHECKPOINTS/.logs)")
    parser.add_argument("--out", required=True, help="report path (.md and .json)")
    args = parser.parse_args()
    logs = Path(args.logs or Path(args.checkpoints) / ".logs")
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    deadline = t0 + args.stop_after if args.stop_after else None
    if not run_all([[name] for name in args.teachers], args, logs, deadline):
        sys.exit(f"a teacher did not finish (logs in {logs}): the students need them")
    print(f"teachers done in {time.time() - t0:.0f} s", flush=True)
    t1 = time.time()
    run_all([args.students[k::args.procs] for k in range(args.procs)], args, logs, deadline)
    print(f"students done in {time.time() - t1:.0f} s", flush=True)
    report = subprocess.run([sys.executable, str(HERE / "accuracy.py"), "--report_only", "--out", args.out,
                             "--checkpoints", args.checkpoints])
    sys.exit(report.returncode)


if __name__ == "__main__":
    main()
