"""Every round of one logit-cache pair across benchmarks/speed.py's result files, pooled: is its ratio met reliably?

A speed.py run with --cache_rounds K times the pair's two arms K times, alternating, and gives the ratio of the
summed wall times. On a machine whose speed drifts within minutes one slow stretch can sink a run, so a single run
says little about reliability. This reads the pair's rounds from each JSON given and prints, per file, its rounds'
ratios and its own ratio against the target; then pooled over every round of every file: the summed wall times'
ratio with a bootstrap 95 % interval (rounds resampled whole, each a no-cache run and its cache run), the median
round, and how many rounds and files reach the target. Nothing is timed here.

From the repo root:

    python benchmarks/cache_rounds.py cache_2ep_bf16_t32_frozen_hd0_fl1 benchmarks/results/speed_cpu_amx_cache_fl1*.json
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

# benchmarks/ is on the path: this file runs as a script
from speed import CACHE_RATIOS, TARGETS, _rounds

PAIRS = {key: (no_cache, cached) for key, no_cache, cached, _ in CACHE_RATIOS}


def file_rounds(report: dict, pair: str) -> list[tuple[float, float]]:
    """(no-cache wall s, cache wall s) of each round of `pair` in one speed.py report, in round order; [] if the
    report has no such pair."""
    no_cache, cached = PAIRS[pair]
    training = report.get("training", {})
    if no_cache not in training or cached not in training:
        return []
    return [(a["wall_s"], b["wall_s"]) for a, b in zip(_rounds(training, no_cache), _rounds(training, cached))]


def pooled(rounds: list[tuple[float, float]], resamples: int = 10_000, seed: int = 0) -> dict:
    """The summed wall times' ratio over rounds, its bootstrap 95 % interval (rounds resampled with replacement),
    and the median of the rounds' own ratios."""
    walls = np.asarray(rounds, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(walls), size=(resamples, len(walls)))
    boot = walls[picks, 0].sum(1) / walls[picks, 1].sum(1)
    return {"rounds": len(walls), "ratio": float(walls[:, 0].sum() / walls[:, 1].sum()),
            "interval": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "median_round": float(np.median(walls[:, 0] / walls[:, 1]))}


def natural_order(names: list[str]) -> list[str]:
    """File names with their numbers compared as numbers: a shell glob's ..._r10 comes after _r9, not before _r2."""
    return sorted(names, key=lambda name: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("pair", choices=sorted(PAIRS), help="the cache ratio's key in speed.py (CACHE_RATIOS)")
    p.add_argument("files", nargs="+", help="speed.py result JSONs (listed in natural order: _r2 before _r10)")
    p.add_argument("--target", type=float, help="default: speed.py's target for the pair")
    args = p.parse_args()
    target = args.target or TARGETS.get(args.pair, 1.4)
    every, lines, file_ratios = [], [], []
    for name in natural_order(args.files):
        rounds = file_rounds(json.loads(Path(name).read_text()), args.pair)
        if not rounds:
            lines.append(f"| {name} | - | no rounds of this pair | - |")
            continue
        ratio = sum(a for a, _ in rounds) / sum(b for _, b in rounds)
        file_ratios.append(ratio)
        every += rounds
        lines.append(f"| {name} | {ratio:.3f}x | {', '.join(f'{a / b:.3f}x' for a, b in rounds)} | "
                     f"{'yes' if ratio >= target else 'no'} |")
    if not every:
        raise SystemExit(f"no rounds of {args.pair} in the files given")
    s = pooled(every)
    rounds_met = sum(a / b >= target for a, b in every)
    files_met = sum(r >= target for r in file_ratios)
    print(f"{args.pair}: no cache / logit cache, 2 epochs' wall time; target {target}x\n\n"
          f"| file | ratio | rounds | met |\n|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
          f"Pooled over {s['rounds']} rounds in {len(file_ratios)} files: {s['ratio']:.3f}x (bootstrap 95 % interval "
          f"{s['interval'][0]:.3f}-{s['interval'][1]:.3f}), median round {s['median_round']:.3f}x; "
          f"{rounds_met} of {s['rounds']} rounds and {files_met} of {len(file_ratios)} files at or above {target}x.")


if __name__ == "__main__":
    main()
