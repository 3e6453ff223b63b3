"""benchmarks/frozen_embeddings.py: the figures it reports (no timing here)."""
import importlib.util
import types
from pathlib import Path

import pytest

from conftest import tiny_bert

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def frozen_embeddings():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))  # it imports benchmarks/student_step.py, as a script does
        spec = importlib.util.spec_from_file_location("kdapp_frozen_embeddings_bench",
                                                      BENCHMARKS / "frozen_embeddings.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_summary_gives_each_arms_mean_and_the_speedup(frozen_embeddings):
    trained, frozen = frozen_embeddings.ARMS
    got = frozen_embeddings.summary({trained: [0.30, 0.34, 0.38], frozen: [0.28, 0.30, 0.32]})
    assert got["s_per_step"] == {trained: 0.34, frozen: 0.3}
    assert got["speedup"] == round(0.34 / 0.30, 3)


def test_trained_parameters_leaves_out_the_frozen_word_embeddings(frozen_embeddings):
    model = tiny_bert()
    every = sum(p.numel() for p in model.parameters())
    step = types.SimpleNamespace(student=model)
    assert frozen_embeddings.trained_parameters(step) == every
    model.get_input_embeddings().weight.requires_grad_(False)
    assert frozen_embeddings.trained_parameters(step) == every - model.get_input_embeddings().weight.numel()
