"""benchmarks/dropout_masks.py: the bool-mask path it compares with, and the figures it reports (no timing here)."""
import importlib.util
from pathlib import Path

import pytest
import torch

import kdapp.dropout as kd

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def dropout_masks():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))  # it imports benchmarks/student_step.py, as a script does
        spec = importlib.util.spec_from_file_location("kdapp_dropout_masks_bench", BENCHMARKS / "dropout_masks.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_bool_masks_brings_back_the_bool_mask_and_then_kdapps_own(dropout_masks):
    with dropout_masks.bool_masks():
        torch.manual_seed(3)
        before = kd.keep_mask((50, 60), 0.1, kd.numpy_generator(), torch.bfloat16)
    torch.manual_seed(3)
    now = kd.keep_mask((50, 60), 0.1, kd.numpy_generator(), torch.bfloat16)
    assert before.dtype == torch.bool and now.dtype == torch.bfloat16
    assert torch.equal(before.to(torch.bfloat16), now)  # the same draws either way


def test_bool_masks_restores_kdapps_masks_after_an_error(dropout_masks):
    own = kd.keep_mask
    with pytest.raises(RuntimeError), dropout_masks.bool_masks():
        raise RuntimeError("a step failed")
    assert kd.keep_mask is own


def test_summary_gives_each_kinds_mean_and_the_speedup(dropout_masks):
    before, after = dropout_masks.KINDS
    got = dropout_masks.summary({before: [0.30, 0.34, 0.38], after: [0.28, 0.30, 0.32]})
    assert got["s_per_step"] == {before: 0.34, after: 0.3}
    assert got["speedup"] == round(0.34 / 0.30, 3)
