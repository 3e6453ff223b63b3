"""RunConfig: the seed's defaults, one validation path for the CLI and the app, and derived names."""
import dataclasses
import json
import re

import pytest

from kdapp.config import FROM_TEACHER, RunConfig, cli_fields


def test_defaults_are_the_seeds_recipe():
    cfg = RunConfig()
    assert (cfg.model, cfg.num_train_epochs, cfg.per_device_train_batch_size, cfg.learning_rate) == \
        ("bert-base-uncased", 1.0, 16, 2e-5)
    assert (cfg.alpha, cfg.temperature, cfg.max_length, cfg.seed, cfg.data) == (0.5, 2.0, 512, 42, "imdb")
    assert RunConfig(kind="distill", teacher="t").student == "distilbert-base-uncased"


@pytest.mark.parametrize("field, value", [
    ("alpha", 1.5), ("alpha", -0.1), ("temperature", 0.0), ("learning_rate", 0.0), ("num_train_epochs", 0.0),
    ("per_device_train_batch_size", 0), ("max_length", 4), ("warmup_steps", 2.5), ("truncation", "middle"),
    ("hidden_loss", "l1"), ("mixed_precision", "fp8"), ("eval_strategy", "sometimes"), ("report_to", "tensorboard"),
    ("max_train_samples", 0), ("max_eval_samples", -3), ("student_layers", 0), ("save_steps", 0),
    ("attention_dropout", 1.0), ("attention_dropout", -0.1), ("teacher_max_length", 4), ("teacher_precision", "int4"),
    ("hidden_dropout", 1.0), ("hidden_dropout", -0.1), ("freeze_layers", -1), ("freeze_layers", 1.5),
])
def test_bad_values_are_refused_with_the_field_name(field, value):
    with pytest.raises(ValueError, match=field):
        RunConfig(**{field: value})


def test_max_steps_replaces_epochs():
    assert RunConfig(num_train_epochs=0, max_steps=5).max_steps == 5


def test_distill_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        RunConfig(kind="distill")
    with pytest.raises(ValueError, match="kind"):
        RunConfig(kind="student")


def test_no_kd_student_refuses_teacher_only_options():
    with pytest.raises(ValueError, match="alpha=1"):
        RunConfig(kind="distill", teacher="t", alpha=1.0, transfer_data="rest")
    with pytest.raises(ValueError, match="alpha=1"):
        RunConfig(kind="distill", teacher="t", alpha=1.0, hidden_loss="cosine")


@pytest.mark.parametrize("name", ["../escape", "a/b", "with space", "", "-lead"])
def test_run_name_must_be_a_plain_folder_name(name):
    with pytest.raises(ValueError, match="run_name"):
        RunConfig(run_name=name)


def test_dataclasses_replace_validates_like_the_constructor():
    base = RunConfig(kind="distill", teacher="t")
    assert dataclasses.replace(base, alpha=0.9).alpha == 0.9
    with pytest.raises(ValueError, match="alpha"):
        dataclasses.replace(base, alpha=2.0)


def test_json_round_trip_and_unknown_keys():
    cfg = RunConfig(kind="distill", teacher="runs/t", alpha=0.2, temperature=4.0, max_train_samples=100)
    values = json.loads(cfg.to_json())
    assert RunConfig.from_dict(values) == cfg
    assert RunConfig.from_dict(values | {"meta": {"x": 1}, "run_name": None}) == cfg  # run_config.json extras


def test_run_names():
    teacher = RunConfig(model="/models/tiny-bert").resolved_run_name()
    assert re.fullmatch(r"teacher-tiny-bert-\d{8}-\d{6}", teacher)
    kd = RunConfig(kind="distill", teacher="checkpoints/t1", student=FROM_TEACHER).resolved_run_name()
    assert kd.startswith("distill-t1-student-kd-")
    nokd = RunConfig(kind="distill", teacher="t", student="distilbert-base-uncased", alpha=1.0).resolved_run_name()
    assert nokd.startswith("distill-distilbert-base-uncased-nokd-")
    named = RunConfig(run_name="mine")
    assert named.resolved_run_name() == "mine" and str(named.resolved_output_dir()) == "checkpoints/mine"
    assert RunConfig(output_dir="/x/y/run7").resolved_run_name() == "run7"


def test_head_tail_budget_follows_sun_et_al():
    assert RunConfig(max_length=512).resolved_head_tokens() == 128
    assert RunConfig(max_length=256, truncation="head_tail").resolved_head_tokens() == 64
    assert RunConfig(max_length=256, head_tokens=10).resolved_head_tokens() == 10
    with pytest.raises(ValueError, match="head_tokens"):
        RunConfig(max_length=16, head_tokens=15)


def test_cli_fields_per_subcommand():
    teacher = {f.name for f in cli_fields("teacher")}
    distill = {f.name for f in cli_fields("distill")}
    assert {"model", "data", "output_dir", "max_train_samples", "learning_rate"} <= teacher
    assert not {"alpha", "temperature", "teacher", "student"} & teacher
    assert {"teacher", "student", "alpha", "temperature", "data", "output_dir"} <= distill
    assert "model" not in distill and "kind" not in teacher | distill
    assert all(f.metadata["help"] for f in cli_fields("distill"))


def test_teacher_max_length_needs_the_logit_cache():
    kd = dict(kind="distill", teacher="t", max_length=256)
    with pytest.raises(ValueError, match="teacher_max_length .* needs alpha < 1, cache_teacher_logits"):
        RunConfig(**kd, teacher_max_length=512)
    with pytest.raises(ValueError, match="hidden_loss none"):
        RunConfig(**kd, teacher_max_length=512, cache_teacher_logits=True, hidden_loss="cosine")
    assert RunConfig(**kd, teacher_max_length=512, cache_teacher_logits=True).teacher_max_length == 512
    assert RunConfig(**kd, teacher_max_length=256).teacher_max_length == 256  # the same length needs nothing


def test_head_tokens_scale_with_the_length_asked_for():
    assert RunConfig(max_length=256).resolved_head_tokens() == 64
    assert RunConfig(max_length=256).resolved_head_tokens(512) == 128  # Sun et al.'s 128 + 382
    assert RunConfig(max_length=256, head_tokens=200).resolved_head_tokens(64) == 62  # at most what fits


def test_freeze_layers_must_leave_a_student_layer_trained():
    assert RunConfig(kind="distill", teacher="t", student_layers=3, freeze_layers=2).freeze_layers == 2
    with pytest.raises(ValueError, match="freeze_layers .3. must leave at least one of the student's 3 layers"):
        RunConfig(kind="distill", teacher="t", student_layers=3, freeze_layers=3)
