"""benchmarks/hidden_dropout.py and the A/B loop it shares with frozen_embeddings.py (benchmarks/student_step.py):
what they count and in which order they run the arms (no timing here)."""
import importlib.util
import types
from pathlib import Path

import pytest

from conftest import tiny_bert
from kdapp.models import set_attention_dropout, set_hidden_dropout

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str):
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))  # they import benchmarks/student_step.py, as a script does
        spec = importlib.util.spec_from_file_location(f"kdapp_{name}_bench", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hidden_dropout():
    return load("hidden_dropout")


@pytest.fixture(scope="module")
def student_step():
    return load("student_step")


def test_the_arms_are_the_models_own_dropout_and_none(hidden_dropout):
    assert [hidden_dropout.HIDDEN_DROPOUT[arm] for arm in hidden_dropout.ARMS] == [None, 0.0]


def test_dropout_layers_counts_the_active_ones(hidden_dropout):
    model = tiny_bert()  # 2 layers: embeddings, 2 x (attention probabilities, attention out, FFN out), head
    step = types.SimpleNamespace(student=model)
    assert hidden_dropout.dropout_layers(step) == {"active": 8, "all": 8}
    set_attention_dropout(model, 0.0)  # the pair's recipe
    assert hidden_dropout.dropout_layers(step) == {"active": 6, "all": 8}
    set_hidden_dropout(model, 0.0)
    assert hidden_dropout.dropout_layers(step) == {"active": 0, "all": 8}


def test_alternate_trains_every_batch_with_each_arm_in_alternating_order(student_step):
    calls = []
    steps = {arm: (lambda batch, arm=arm: calls.append((arm, batch))) for arm in ("a", "b")}
    batches = [[0], [1], [2], [3], [4]]
    seconds = student_step.alternate(steps, batches, rounds=2, label="test")
    warm_up, timed = calls[:8], calls[8:]
    assert warm_up == [(arm, b) for b in batches[:4] for arm in ("a", "b")]
    assert len(timed) == 2 * 2 * len(batches) and {arm: len(t) for arm, t in seconds.items()} == {"a": 10, "b": 10}
    firsts = [timed[i][0] for i in range(0, len(timed), 2)]
    assert firsts == ["a", "b", "a", "b", "a"] + ["b", "a", "b", "a", "b"]  # batch to batch, and round to round
    assert all(timed[i][1] == timed[i + 1][1] for i in range(0, len(timed), 2))  # both arms on the same batch


def test_summary_gives_each_arms_mean_and_the_first_over_the_second(student_step):
    got = student_step.summary({"own": [0.30, 0.34, 0.38], "none": [0.28, 0.30, 0.32]})
    assert got["s_per_step"] == {"own": 0.34, "none": 0.3}
    assert got["speedup"] == round(0.34 / 0.30, 3)
