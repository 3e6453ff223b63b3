"""benchmarks/cache_rounds.py's pooling of the logit-cache pair's rounds (made-up wall times: nothing is timed)."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PAIR = "cache_2ep_bf16_t32_frozen_hd0_fl1"
NO_CACHE, CACHED = "kdapp_2ep_nocache_bf16_t32_frozen_hd0_fl1", "kdapp_2ep_cache_bf16_t32_frozen_hd0_fl1"


@pytest.fixture(scope="module")
def rounds_module():
    spec = importlib.util.spec_from_file_location("kdapp_cache_rounds", BENCHMARKS / "cache_rounds.py")
    module = importlib.util.module_from_spec(spec)
    env, path = dict(os.environ), list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))  # it imports speed.py as the scripts do
    try:
        spec.loader.exec_module(module)  # speed.py sets the benchmark's OpenMP and hub variables: not for the others
    finally:
        os.environ.clear()
        os.environ.update(env)
        sys.path[:] = path
    return module


def _report(*walls):
    """A speed.py report holding the pair's rounds: walls are (no-cache s, cache s) per round."""
    training = {"seed_baseline_1ep": {"wall_s": 1.0}}
    for n, (a, b) in enumerate(walls, start=1):
        suffix = "" if n == 1 else f"#{n}"
        training[NO_CACHE + suffix], training[CACHED + suffix] = {"wall_s": a}, {"wall_s": b}
    return {"training": training}


def test_file_rounds_pairs_each_round_in_order(rounds_module):
    assert rounds_module.file_rounds(_report((150, 100), (140, 110), (130, 90)), PAIR) == [
        (150, 100), (140, 110), (130, 90)]
    assert rounds_module.file_rounds(_report((150, 100)), "cache_2ep") == []  # another pair: none of its rounds


def test_pooled_sums_the_walls_and_bounds_the_ratio(rounds_module):
    rounds = [(150, 100), (140, 110), (130, 90), (145, 100)]
    s = rounds_module.pooled(rounds)
    assert s["rounds"] == 4 and s["ratio"] == pytest.approx(565 / 400)
    ratios = sorted(a / b for a, b in rounds)
    assert s["median_round"] == pytest.approx((ratios[1] + ratios[2]) / 2)
    lo, hi = s["interval"]
    assert min(a / b for a, b in rounds) <= lo <= s["ratio"] <= hi <= max(a / b for a, b in rounds)


def test_identical_rounds_leave_no_spread(rounds_module):
    s = rounds_module.pooled([(150, 100)] * 5)
    assert s["ratio"] == pytest.approx(1.5) and s["interval"] == pytest.approx([1.5, 1.5])


def test_files_are_listed_in_natural_order(rounds_module):
    names = ["r/speed_fl1_r10.json", "r/speed_fl1.json", "r/speed_fl1_r2.json", "r/speed_fl1_r9.json"]
    assert rounds_module.natural_order(names) == [
        "r/speed_fl1.json", "r/speed_fl1_r2.json", "r/speed_fl1_r9.json", "r/speed_fl1_r10.json"]
