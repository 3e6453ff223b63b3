"""benchmarks/speed.py's report arithmetic for the logit-cache pairs (no timing: the runs are made-up numbers)."""
import importlib.util
import os
from pathlib import Path

import pytest

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    spec = importlib.util.spec_from_file_location("kdapp_speed_bench", SPEED)
    module = importlib.util.module_from_spec(spec)
    env = dict(os.environ)
    try:
        spec.loader.exec_module(module)  # it sets the benchmark's OpenMP and hub variables: not for the other tests
    finally:
        os.environ.clear()
        os.environ.update(env)
    return module


def _run(wall, train, cache=0.0, epochs=2):
    return {"wall_s": wall, "train_runtime_s": train, "cache_s": cache, "epochs": epochs}


def test_cache_parts_split_each_arm_per_epoch(speed):
    # no cache: 2 epochs of teacher 40 + student 42 and 4 s fixed; cache: a 38 s pass, 2 x 42 s, 5 s fixed
    no_cache, cached = [_run(168, 164)], [_run(127, 84, cache=38)]
    parts = speed.cache_parts(no_cache, cached)
    assert parts == pytest.approx({"epochs": 2, "teacher": 40, "student": 42, "cache_pass": 38,
                                   "fixed_no_cache": 4, "fixed_cache": 5})


def test_cache_parts_average_the_rounds(speed):
    parts = speed.cache_parts([_run(168, 164), _run(188, 184)], [_run(127, 84, 38), _run(137, 92, 40)])
    assert parts["student"] == pytest.approx(44)  # (84 + 92) / 2 / 2 epochs
    assert parts["teacher"] == pytest.approx(87 - 44)
    assert parts["cache_pass"] == pytest.approx(39)


@pytest.mark.parametrize("epochs", [2, 3])
def test_student_epoch_for_gives_the_ratio_back(speed, epochs):
    parts = {"epochs": epochs, "teacher": 40.4, "student": 42.0, "cache_pass": 38.4, "fixed_no_cache": 4.5,
             "fixed_cache": 4.3}
    s = speed.student_epoch_for(1.4, parts)
    no_cache = epochs * (parts["teacher"] + s) + parts["fixed_no_cache"]
    cached = parts["cache_pass"] + epochs * s + parts["fixed_cache"]
    assert no_cache / cached == pytest.approx(1.4)
    # a faster student than that pays more, a slower one less
    assert (epochs * (parts["teacher"] + s - 1) + 4.5) / (38.4 + epochs * (s - 1) + 4.3) > 1.4


def test_the_cache_row_names_the_parts_and_the_bound(speed):
    report = {"training": {"kdapp_2ep_nocache": _run(168, 164), "kdapp_2ep_cache": _run(127, 84, cache=38)},
              "inference": {}, "setup": {}}
    row = next(r for r in speed.ratios(report) if r["key"] == "cache_2ep")
    assert row["ratio"] == pytest.approx(168 / 127, abs=1e-3) and row["met"] is False
    bound = speed.student_epoch_for(1.4, speed.cache_parts([_run(168, 164)], [_run(127, 84, cache=38)]))
    assert "teacher on the fly 40.0 s" in row["note"] and f"at or below {bound:.1f} s" in row["note"]


def test_the_note_says_when_no_student_could_reach_the_target(speed):
    # the cache pass and its fixed time cost more than the teacher's two epochs on the fly would save
    report = {"training": {"kdapp_2ep_nocache": _run(10, 8), "kdapp_2ep_cache": _run(10, 6, cache=2)},
              "inference": {}, "setup": {}}
    row = next(r for r in speed.ratios(report) if r["key"] == "cache_2ep")
    assert "no student epoch, however short, gives 1.4x" in row["note"] and "at or below" not in row["note"]


def test_cache_parts_split_the_no_cache_arm_where_the_teacher_was_timed(speed):
    # the teacher's forward timed in the no-cache arm's steps: 2 x 45 s of its 164 s training
    no_cache = [dict(_run(168, 164), teacher_on_the_fly_s=90.0)]
    parts = speed.cache_parts(no_cache, [_run(127, 84, cache=38)])
    assert parts["teacher_timed"] == pytest.approx(45) and parts["student_no_cache"] == pytest.approx(37)
    assert parts["teacher"] == pytest.approx(40)  # the derived split is kept beside it
    report = {"training": {"kdapp_2ep_nocache": no_cache[0], "kdapp_2ep_cache": _run(127, 84, cache=38)},
              "inference": {}, "setup": {}}
    row = next(r for r in speed.ratios(report) if r["key"] == "cache_2ep")
    assert "timed in its steps: 45.0 s, beside 37.0 s of the student's" in row["note"]
    assert "teacher_timed" not in speed.cache_parts([_run(168, 164)], [_run(127, 84, cache=38)])


def test_the_shared_layer_pair_counts_for_the_target_and_the_pairs_measured_before_it_stay_as_they_were(speed):
    key = "cache_2ep_bf16_t32_frozen_hd0_fl1_shared"
    no_cache, cached = next((nc, c) for k, nc, c, _ in speed.CACHE_RATIOS if k == key)
    assert speed.TARGETS[key] == 1.4
    assert all("share_frozen_layers" not in speed.KD_RUNS[run][2] for run in (no_cache, cached))  # kdapp's default
    assert all(speed.KD_RUNS[f"kdapp_2ep_{arm}_bf16_t32_frozen_hd0_fl{n}"][2]["share_frozen_layers"] is False
               for arm in ("nocache", "cache") for n in (1, 2))
    assert speed._shared_label({"shared_layers": 1, "shared_layer_states_kept": 2000}) == "1 layer, kept for 2000 rows"
    assert speed._shared_label({"shared_layers": 1, "shared_layer_states_kept": None}) == "1 layer"
    assert speed._shared_label({"freeze_layers": 1}) == "-"  # a report made before the field


def test_each_path_is_measured_against_its_own_precisions_peak(speed):
    assert speed._peak("kdapp_int8", 100.0, 400.0, 300.0) == (300.0, "int8")
    assert speed._peak("kdapp_bf16", 100.0, 400.0, 300.0) == (400.0, "bf16")
    assert speed._peak("kdapp_fp32", 100.0, 400.0, 300.0) == (100.0, "fp32")
    # where a peak was not measured (bf16 emulated, or no inference part) the path falls back to fp32's
    assert speed._peak("kdapp_int8", 100.0, None) == (100.0, "fp32")
    assert speed._peak("kdapp_bf16", 100.0, None, 300.0) == (100.0, "fp32")


def test_the_int8_yardstick_times_a_quantized_linear(speed):
    gflops = speed.int8_linear_gflops(n=64, repeats=2)
    assert gflops > 0 and gflops == gflops  # a number, not NaN
