"""benchmarks/fp32_attention.py: each arm trains under its own attention budget, and says where it sends the
recipe's attention (no timing here)."""
import types

import pytest

import kdapp.dropout as kd
from conftest import tiny_bert
from test_hidden_dropout import load


@pytest.fixture(scope="module")
def bench():
    return load("fp32_attention")


def test_each_arm_sets_its_budget_before_every_step(bench, monkeypatch):
    seen = []

    def fake_student_step(data, precision, attention_dropout=0.0, **kwargs):
        assert (precision, attention_dropout, kwargs) == ("fp32", 0.1, {})  # kdapp's default recipe and dropout
        step = lambda batch: seen.append((batch, kd.WHOLE_BYTES))  # noqa: E731
        step.student = object()
        return step, [[0], [1]]

    monkeypatch.setattr(bench, "student_step", fake_student_step)
    monkeypatch.setattr(kd, "WHOLE_BYTES", kd.WHOLE_BYTES)  # restored after the test
    default = kd.WHOLE_BYTES
    steps = {arm: bench.build("data", "fp32", arm)[0] for arm in bench.ARMS}
    steps["blocks"]([0])
    steps["whole"]([1])
    steps["blocks"]([1])
    assert seen == [([0], 0), ([1], default), ([1], 0)]


def test_path_at_recipe_names_each_arms_path_and_leaves_the_budget(bench):
    before = kd.WHOLE_BYTES
    student = tiny_bert()  # its head count and width make the (16, heads, 256, dim) query
    assert bench.path_at_recipe(types.SimpleNamespace(student=student, budget=0)) == "blocks"
    assert bench.path_at_recipe(types.SimpleNamespace(student=student, budget=before)) == "whole"
    assert kd.WHOLE_BYTES == before
