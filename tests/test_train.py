"""End to end through train_teacher and distill_student with tiny models: files, metrics, options, resume."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

from kdapp.cache import row_keys, teacher_fingerprint
from kdapp.checkpoints import INCOMPLETE, is_complete, last_trainer_checkpoint, load_run_info
from kdapp.config import FROM_TEACHER, RunConfig
from kdapp.data import load_splits
from kdapp.encoding import encode
from kdapp.inference import logits_from_ids, prepare_model
from kdapp.models import ModelError, load_pair
from kdapp.quantize import CALIBRATION_FILE, calibration_tag
from kdapp.train import distill_student, train_teacher

FAST = dict(max_length=32, max_steps=3, per_device_train_batch_size=8, per_device_eval_batch_size=32,
            max_train_samples=48, max_eval_samples=16, logging_steps=1, learning_rate=1e-3, num_threads=1)
METRIC_KEYS = {"n", "accuracy", "f1_weighted", "ece", "nll", "confusion_matrix", "reliability"}


def teacher_cfg(data, out, **kw):
    return RunConfig(kind="teacher", data=str(data), output_dir=str(out), **(FAST | kw))


def distill_cfg(data, teacher, student, out, **kw):
    return RunConfig(kind="distill", teacher=str(teacher), student=str(student), data=str(data), output_dir=str(out),
                     **(FAST | kw))


class StepRecorder(TrainerCallback):
    def __init__(self, crash_at=None, stop_at=None):
        self.steps, self.crash_at, self.stop_at = [], crash_at, stop_at

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)
        if state.global_step == self.crash_at:
            raise RuntimeError("simulated crash")
        if state.global_step == self.stop_at:
            control.should_training_stop = True


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder (and cwd, for the logit cache under checkpoints/) for the module's runs."""
    path = tmp_path_factory.mktemp("train")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)
        yield path


@pytest.fixture(scope="module")
def teacher_run(workdir, teacher_dir, reviews_parquet):
    result = train_teacher(teacher_cfg(reviews_parquet, workdir / "teacher", model=str(teacher_dir)))
    assert result.status == "done", result.message
    return result


# ---------------------------------------------------------------- teacher
def test_teacher_run_writes_a_whole_standard_folder(teacher_run, tokenizer):
    out = teacher_run.output_dir
    assert is_complete(out) and not (out.parent / f"{out.name}{INCOMPLETE}").exists()
    names = {f.name for f in out.iterdir()}
    assert {"model.safetensors", "config.json", "run_config.json", "metrics.json", "tokenizer_config.json"} <= names
    assert names & {"tokenizer.json", "vocab.txt"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics["validation"])
    assert metrics["validation"]["n"] == 16
    assert len(metrics["validation"]["confusion_matrix"]) == 2 and len(metrics["validation"]["reliability"]) == 15
    assert 0 <= metrics["validation"]["accuracy"] <= 1 and 0 <= metrics["validation"]["ece"] <= 1
    assert metrics["params"] > 0 and metrics["size_mb"] > 0 and metrics["global_step"] == 3
    assert metrics["train_runtime_s"] >= 0
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["kind"] == "teacher" and run_config["max_length"] == 32 and run_config["seed"] == 42
    assert run_config["meta"]["train_rows"] == 48 and "torch" in run_config["meta"]
    assert RunConfig.from_dict(run_config).max_train_samples == 48  # the run is reproducible from its config


def test_teacher_output_loads_with_auto_classes(teacher_run, tokenizer):
    out = teacher_run.output_dir
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.get_vocab() == tokenizer.get_vocab()
    batch = tok(["the movie was great", "awful"], padding=True, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}


def test_teacher_training_changed_the_weights(teacher_run, teacher_dir):
    before = AutoModelForSequenceClassification.from_pretrained(teacher_dir).state_dict()
    after = AutoModelForSequenceClassification.from_pretrained(teacher_run.output_dir).state_dict()
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(before[key], after[key])


def test_separate_test_file_is_scored(workdir, teacher_dir, reviews_parquet):
    result = train_teacher(teacher_cfg(reviews_parquet, workdir / "with-test", model=str(teacher_dir),
                                       test_data=str(reviews_parquet), max_steps=1))
    assert result.metrics["test"]["n"] == 16  # max_eval_samples also caps the test rows
    assert "test" in json.loads((result.output_dir / "metrics.json").read_text())


def test_max_length_beyond_the_model_is_refused(workdir, teacher_dir, reviews_parquet):
    with pytest.raises(ValueError, match="beyond the model's limit of 64"):
        train_teacher(teacher_cfg(reviews_parquet, workdir / "too-long", model=str(teacher_dir), max_length=128))
    assert not (workdir / "too-long").exists()


def test_second_run_into_the_same_folder_fails_before_training(teacher_run, reviews_parquet, teacher_dir,
                                                                monkeypatch):
    def never(*a, **k):
        raise AssertionError("a model was loaded: the check came too late")

    monkeypatch.setattr("kdapp.train.load_pair", never)
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_teacher(teacher_cfg(reviews_parquet, teacher_run.output_dir, model=str(teacher_dir)))
    with pytest.raises(FileExistsError, match="--overwrite"):
        distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, teacher_run.output_dir))


# ---------------------------------------------------------------- distillation
def test_distilled_student(teacher_run, student_dir, reviews_parquet, workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, student_dir, workdir / "kd",
                                         alpha=0.5, temperature=2.0))
    assert result.status == "done" and is_complete(result.output_dir)
    logs = [h for h in result.log_history if "loss" in h]
    assert len(logs) == 3 and all("loss_ce" in h and "loss_kd" in h for h in logs)
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    info = load_run_info(result.output_dir)
    assert info.kind == "kd" and info.run_config["teacher"] == str(teacher_run.output_dir)
    assert info.run_config["meta"]["teacher_params"] > info.metrics["params"]
    assert METRIC_KEYS <= set(info.metrics["validation"])


def test_attention_dropout_reaches_the_student_and_its_saved_config(teacher_run, reviews_parquet, workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "ad0",
                                         attention_dropout=0.0))
    assert load_run_info(result.output_dir).run_config["attention_dropout"] == 0.0
    saved = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert saved.config.attention_probs_dropout_prob == 0.0
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_run.output_dir)
    assert teacher.config.attention_probs_dropout_prob > 0  # the teacher's own folder is left as it was


def test_hidden_dropout_reaches_the_student_and_its_saved_config(teacher_run, reviews_parquet, workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "hd0",
                                         hidden_dropout=0.0))
    assert result.status == "done", result.message
    assert load_run_info(result.output_dir).run_config["hidden_dropout"] == 0.0
    saved = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert saved.config.hidden_dropout_prob == 0.0 and saved.config.classifier_dropout == 0.0
    assert saved.config.attention_probs_dropout_prob > 0  # the attention's is the model's own
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_run.output_dir)
    assert teacher.config.hidden_dropout_prob > 0  # the teacher's own folder is left as it was


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_word_embeddings_keeps_the_teachers_and_trains_the_rest(teacher_run, reviews_parquet, workdir, freeze):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER,
                                         workdir / f"frozen-{freeze}", freeze_word_embeddings=freeze))
    assert result.status == "done", result.message
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_run.output_dir)
    student = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    words = teacher.get_input_embeddings().weight
    assert torch.equal(student.get_input_embeddings().weight, words) is freeze
    # the rest trained either way: the layer the student took from the teacher's first has moved
    assert not torch.equal(student.bert.encoder.layer[0].output.dense.weight,
                           teacher.bert.encoder.layer[0].output.dense.weight)
    meta = load_run_info(result.output_dir).run_config["meta"]
    assert meta["frozen_parameters"] == (words.numel() if freeze else 0)


def test_freeze_layers_keeps_the_embeddings_and_first_layer_and_trains_the_rest(teacher_run, reviews_parquet,
                                                                                 workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER,
                                         workdir / "freeze-layers", freeze_layers=1))
    assert result.status == "done", result.message
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_run.output_dir)
    student = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert len(student.bert.encoder.layer) == 2  # the teacher's layers 0 and 2
    kept = [*zip(student.bert.embeddings.parameters(), teacher.bert.embeddings.parameters()),
            *zip(student.bert.encoder.layer[0].parameters(), teacher.bert.encoder.layer[0].parameters())]
    assert all(torch.equal(s, t) for s, t in kept)
    # what lies above trained: the second layer (the teacher's third) and the classifier
    assert not torch.equal(student.bert.encoder.layer[1].output.dense.weight,
                           teacher.bert.encoder.layer[2].output.dense.weight)
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)
    meta = load_run_info(result.output_dir).run_config["meta"]
    assert meta["frozen_parameters"] == sum(s.numel() for s, _ in kept)


class LayerCalls(TrainerCallback):
    """Counts the training steps' calls of the student's first layer's attention (not run when it is handed over)."""

    def __init__(self):
        self.calls = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.hook = model.bert.encoder.layer[0].attention.register_forward_hook(
            lambda *a: setattr(self, "calls", self.calls + 1))

    def on_train_end(self, args, state, control, **kwargs):
        self.hook.remove()  # the scoring after training runs the student's own layers


@pytest.mark.parametrize("cache", [False, True])
def test_a_run_with_a_frozen_first_layer_starts_the_student_above_it(teacher_run, reviews_parquet, workdir, cache,
                                                                      tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty logit cache: the first run's teacher pass computes (and keeps) every row
    recipe = dict(freeze_layers=1, attention_dropout=0.0, hidden_dropout=0.0, cache_teacher_logits=cache,
                  eval_strategy="no")
    runs = []
    # with the cache: the first run computes every row, the others read the file (the third keeps the states again,
    # from the teacher's first layer alone)
    for n, share in enumerate((True, False, True) if cache else (True, False)):
        calls = LayerCalls()
        result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER,
                                             workdir / f"shared-{cache}-{n}", share_frozen_layers=share, **recipe),
                                 callbacks=[calls])
        assert result.status == "done", result.message
        runs.append((result, calls.calls, load_run_info(result.output_dir).run_config["meta"]))
    (shared, shared_calls, meta), (own, own_calls, own_meta) = runs[:2]
    assert meta["shared_layers"] == 1 and own_meta["shared_layers"] == 0
    assert meta["shared_layer_states_kept"] == (48 if cache else None)  # every training row's state
    assert meta["shared_layer_states_bottom_pass"] == (0 if cache else None)
    assert own_meta["shared_layer_states_kept"] is None
    assert shared_calls == 0 and own_calls == 3  # the student's first layer ran in none of the 3 steps
    # the same training: the same losses and, within float rounding, the same weights
    for other, _, _ in runs[1:]:
        losses = [[e["loss"] for e in r.log_history if "loss" in e] for r in (shared, other)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
        torch.testing.assert_close(load_file(shared.output_dir / "model.safetensors"),
                                   load_file(other.output_dir / "model.safetensors"), atol=1e-4, rtol=1e-3)
    if cache:
        _, warm_calls, warm_meta = runs[2]
        assert warm_meta["teacher_logits_cache_hit"] and warm_calls == 0
        assert warm_meta["shared_layer_states_kept"] == warm_meta["shared_layer_states_bottom_pass"] == 48


def test_shared_layer_states_too_big_for_memory_leave_the_student_computing_its_own(teacher_run, reviews_parquet,
                                                                                     workdir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("kdapp.train.fits_in_memory", lambda n_tokens, hidden: False)
    calls = LayerCalls()
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "no-room",
                                         freeze_layers=1, attention_dropout=0.0, hidden_dropout=0.0,
                                         cache_teacher_logits=True, eval_strategy="no"), callbacks=[calls])
    assert result.status == "done", result.message
    meta = load_run_info(result.output_dir).run_config["meta"]
    assert meta["shared_layers"] == 1 and meta["shared_layer_states_kept"] is None
    assert calls.calls == 3  # every step ran the student's own first layer


def test_freeze_layers_that_would_leave_nothing_to_train_is_refused(teacher_run, reviews_parquet, workdir):
    with pytest.raises(ValueError, match="freeze_layers 2: BertForSequenceClassification has 2 encoder layers"):
        distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER,
                                    workdir / "freeze-all", freeze_layers=2))
    assert not (workdir / "freeze-all").exists()


def test_freeze_word_embeddings_on_a_teacher_run(teacher_dir, reviews_parquet, workdir):
    result = train_teacher(teacher_cfg(reviews_parquet, workdir / "teacher-frozen", model=str(teacher_dir),
                                       freeze_word_embeddings=True))
    assert result.status == "done", result.message
    start = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    trained = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert torch.equal(trained.get_input_embeddings().weight, start.get_input_embeddings().weight)
    assert not torch.equal(trained.classifier.weight, start.classifier.weight)


@pytest.mark.parametrize("fast_dropout, path", [(True, "kdapp-cpu"), (False, "torch")])
def test_dropout_path_is_recorded_and_the_checkpoint_is_plain(teacher_run, reviews_parquet, workdir, fast_dropout,
                                                              path):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER,
                                         workdir / f"dropout-{path}", fast_dropout=fast_dropout))
    assert result.status == "done", result.message
    info = load_run_info(result.output_dir)
    assert info.run_config["meta"]["dropout_path"] == path and info.run_config["fast_dropout"] is fast_dropout
    assert info.run_config["meta"]["last_layer"] == "cls-only"  # kdapp's default: the last layer at [CLS] only
    saved = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert type(saved.bert.encoder.layer[-1]).__name__ == "BertLayer"
    assert "kdapp_cpu" not in (result.output_dir / "config.json").read_text()  # loadable without kdapp


def test_alpha_one_is_the_no_kd_student(teacher_run, student_dir, reviews_parquet, workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, student_dir, workdir / "nokd",
                                         alpha=1.0))
    logs = [h for h in result.log_history if "loss" in h]
    assert logs and all(h["loss_kd"] == 0.0 for h in logs)
    assert all(h["loss"] == pytest.approx(h["loss_ce"], abs=1e-3) for h in logs)
    assert load_run_info(result.output_dir).kind == "nokd"


def test_student_from_teacher_with_hidden_loss(teacher_run, reviews_parquet, workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "ft",
                                         hidden_loss="cosine"))
    meta = json.loads((result.output_dir / "run_config.json").read_text())["meta"]
    assert meta["student_layer_map"] == [0, 2]
    assert meta["last_layer"] == "full"  # the hidden-state loss reads every position of the last layer
    model = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert model.config.num_hidden_layers == 2 and len(model.bert.encoder.layer) == 2
    assert all("loss_hidden" in h for h in result.log_history if "loss" in h)


def test_transfer_rest_adds_kd_only_rows(teacher_run, student_dir, reviews_parquet, workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, student_dir, workdir / "rest",
                                         transfer_data="rest", transfer_samples=40))
    meta = json.loads((result.output_dir / "run_config.json").read_text())["meta"]
    assert (meta["train_rows"], meta["transfer_rows"]) == (48, 40)


def test_cached_teacher_logits(teacher_run, student_dir, reviews_parquet, workdir):
    first = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, student_dir, workdir / "cache1",
                                        cache_teacher_logits=True))
    meta = json.loads((first.output_dir / "run_config.json").read_text())["meta"]
    assert meta["teacher_logits_cached"] is True and meta["teacher_logits_cache_hit"] is False
    assert list((workdir / "checkpoints" / ".cache" / "logits").glob("*.safetensors"))
    assert all("loss_kd" in h for h in first.log_history if "loss" in h)
    second = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, student_dir, workdir / "cache2",
                                         cache_teacher_logits=True))
    assert json.loads((second.output_dir / "run_config.json").read_text())["meta"]["teacher_logits_cache_hit"]
    # the same seed, data and soft targets: the cached run trains exactly like the first one
    assert second.metrics["train_loss"] == pytest.approx(first.metrics["train_loss"], abs=1e-6)


def _only_cache_file(cwd) -> tuple[str, dict]:
    (path,) = (cwd / "checkpoints" / ".cache" / "logits").glob("*.safetensors")
    stored = load_file(path)
    return path.stem, dict(zip((k.tobytes() for k in stored["keys"].numpy()), stored["logits"]))


def test_teacher_max_length_labels_the_cache_from_longer_inputs(teacher_run, reviews_parquet, workdir, tmp_path,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty logit cache: it will hold exactly the rows this run's teacher labelled
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "tlen",
                                         max_length=16, teacher_max_length=32, cache_teacher_logits=True))
    assert result.status == "done", result.message
    run_config = json.loads((result.output_dir / "run_config.json").read_text())
    assert run_config["teacher_max_length"] == 32 and run_config["meta"]["teacher_max_length_effective"] == 32
    teacher, tok = load_pair(str(teacher_run.output_dir))
    texts = load_splits(str(reviews_parquet), None, 48)["train"]["text"]
    long_ids, short_ids = encode(tok, texts, 32), encode(tok, texts, 16)
    assert sum(a != b for a, b in zip(long_ids, short_ids)) > 10  # many reviews are longer than the student reads
    _, stored = _only_cache_file(tmp_path)
    keys = [k.tobytes() for k in row_keys(long_ids)]
    assert set(stored) == set(keys)
    expected = logits_from_ids(teacher, long_ids, tok.pad_token_id)
    assert torch.allclose(torch.stack([stored[k] for k in keys]), torch.from_numpy(expected), atol=1e-5)


def test_int8_teacher_fills_its_own_cache_with_its_own_logits(teacher_run, reviews_parquet, workdir, tmp_path,
                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "tint8",
                                         teacher_precision="int8", cache_teacher_logits=True))
    assert result.status == "done", result.message
    assert json.loads((result.output_dir / "run_config.json").read_text())["meta"][
        "teacher_precision_effective"] == "int8"
    teacher, tok = load_pair(str(teacher_run.output_dir))
    name, stored = _only_cache_file(tmp_path)
    # never mixed with the fp32 teacher's cache, nor with int8 logits of another calibration (the teacher run's own)
    assert teacher.kdapp_int8_maxima and (teacher_run.output_dir / CALIBRATION_FILE).is_file()
    assert name == f"{teacher_fingerprint(teacher)}-int8-perchannel{calibration_tag(teacher.kdapp_int8_maxima)}"
    ids = encode(tok, load_splits(str(reviews_parquet), None, 48)["train"]["text"], 32)
    got = torch.stack([stored[k.tobytes()] for k in row_keys(ids)])
    # dynamic int8 quantizes activations per batch: batched as the run batched them (per_device_eval_batch_size)
    int8 = torch.from_numpy(logits_from_ids(prepare_model(teacher, "int8", "cpu"), ids, tok.pad_token_id, 32))
    fp32 = torch.from_numpy(logits_from_ids(teacher, ids, tok.pad_token_id))
    assert torch.allclose(got, int8, atol=1e-5) and not torch.allclose(got, fp32, atol=1e-5)


def test_int8_teacher_on_the_fly(teacher_run, student_dir, reviews_parquet, workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, student_dir, workdir / "tint8-fly",
                                         teacher_precision="int8"))
    assert result.status == "done", result.message
    meta = json.loads((result.output_dir / "run_config.json").read_text())["meta"]
    assert meta["teacher_precision_effective"] == "int8" and meta["teacher_logits_cached"] is False
    assert meta["teacher_params"] > 0 and all(h["loss_kd"] > 0 for h in result.log_history if "loss" in h)


class LinearDtypes(TrainerCallback):
    """The dtype of the trained model's first Linear output at every training forward."""
    def __init__(self):
        self.dtypes = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
        linear.register_forward_hook(lambda mod, inp, out: self.dtypes.add(out.dtype) if mod.training else None)


def test_cpu_bf16_training_runs_student_and_teacher_in_bf16(teacher_run, reviews_parquet, workdir, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # an empty logit cache
    seen = LinearDtypes()
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "bf16",
                                         mixed_precision="bf16", cache_teacher_logits=True), callbacks=[seen])
    assert result.status == "done", result.message
    assert seen.dtypes == {torch.bfloat16}  # the student's forward under autocast
    meta = load_run_info(result.output_dir).run_config["meta"]
    assert (meta["mixed_precision_effective"], meta["teacher_precision_effective"]) == ("bf16", "bf16")
    assert meta["dropout_path"] == "kdapp-cpu"  # kdapp's CPU dropout and bf16 attention
    assert "kdapp_cpu" not in (result.output_dir / "config.json").read_text()  # loadable without kdapp
    saved = load_file(result.output_dir / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # float32 master weights, as saved
    # the cache holds the bf16 teacher's logits, in a file of its own (never mixed with the fp32 teacher's)
    teacher, tok = load_pair(str(teacher_run.output_dir))
    bf16_teacher = prepare_model(teacher, "bf16", "cpu")
    name, stored = _only_cache_file(tmp_path)
    assert name == teacher_fingerprint(bf16_teacher) != teacher_fingerprint(teacher)
    ids = encode(tok, load_splits(str(reviews_parquet), None, 48)["train"]["text"], 32)
    got = torch.stack([stored[k.tobytes()] for k in row_keys(ids)])
    assert torch.allclose(got, torch.from_numpy(logits_from_ids(bf16_teacher, ids, tok.pad_token_id, 32)), atol=1e-5)


def test_cpu_bf16_teacher_on_the_fly_and_a_teacher_run(teacher_run, teacher_dir, student_dir, reviews_parquet,
                                                        workdir):
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, student_dir, workdir / "bf16-fly",
                                         mixed_precision="bf16", teacher_precision="fp32"))
    assert result.status == "done", result.message
    meta = load_run_info(result.output_dir).run_config["meta"]
    assert (meta["mixed_precision_effective"], meta["teacher_precision_effective"]) == ("bf16", "fp32")
    assert all(h["loss_kd"] > 0 for h in result.log_history if "loss" in h)
    seen = LinearDtypes()
    teacher = train_teacher(teacher_cfg(reviews_parquet, workdir / "bf16-teacher", model=str(teacher_dir),
                                        mixed_precision="bf16"), callbacks=[seen])
    assert teacher.status == "done" and seen.dtypes == {torch.bfloat16}
    assert load_run_info(teacher.output_dir).run_config["meta"]["mixed_precision_effective"] == "bf16"


def test_cpu_bf16_with_the_on_the_fly_options(teacher_run, reviews_parquet, workdir):
    """The hidden-state loss, mixup and online masking read the bf16 teacher's outputs next to the student's."""
    result = distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "bf16-views",
                                         mixed_precision="bf16", hidden_loss="cosine", mixup_alpha=0.4,
                                         online_mask_prob=0.2))
    assert result.status == "done", result.message
    logs = [h for h in result.log_history if "loss" in h]
    parts = ("loss", "loss_ce", "loss_kd", "loss_hidden", "loss_mix", "loss_masked")
    assert logs and all(math.isfinite(h[k]) for h in logs for k in parts)
    assert load_run_info(result.output_dir).run_config["meta"]["teacher_precision_effective"] == "bf16"


def test_cpu_fp16_is_refused_before_any_work(teacher_run, teacher_dir, reviews_parquet, workdir):
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, FROM_TEACHER, workdir / "fp16",
                                    mixed_precision="fp16"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        train_teacher(teacher_cfg(reviews_parquet, workdir / "fp16-teacher", model=str(teacher_dir),
                                  mixed_precision="fp16"))
    assert not (workdir / "fp16").exists() and not (workdir / "fp16-teacher").exists()


@pytest.mark.parametrize("asked, native, dtype, warns", [("auto", True, None, False), ("no", True, None, False),
                                                         ("bf16", True, torch.bfloat16, False),
                                                         ("bf16", False, torch.bfloat16, True)])
def test_cpu_mixed_precision_choice(monkeypatch, caplog, asked, native, dtype, warns):
    import kdapp.train

    monkeypatch.setattr(kdapp.train.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(kdapp.train, "native_bf16", lambda: native)
    cfg = RunConfig(kind="teacher", data="d.csv", mixed_precision=asked)
    with caplog.at_level("WARNING", logger="kdapp.train"):
        assert kdapp.train.mixed_precision_dtype(cfg, warn=False) == dtype  # an estimate's or the app's check
        assert "no native bf16" not in caplog.text
        assert kdapp.train.mixed_precision_dtype(cfg) == dtype
    assert ("no native bf16" in caplog.text) is warns


def test_student_with_another_vocabulary_is_refused(teacher_run, reviews_parquet, workdir, tmp_path):
    from conftest import VOCAB, tiny_distilbert
    from transformers import BertTokenizerFast

    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "vocab.txt").write_text("\n".join(reversed(VOCAB)) + "\n")
    tiny_distilbert().save_pretrained(tmp_path / "student")
    BertTokenizerFast.from_pretrained(str(tmp_path / "v")).save_pretrained(tmp_path / "student")
    with pytest.raises(ModelError, match="tokenizers differ"):
        distill_student(distill_cfg(reviews_parquet, teacher_run.output_dir, tmp_path / "student", workdir / "bad"))
    assert not (workdir / "bad").exists()


# ---------------------------------------------------------------- interruption
def test_cancel_publishes_nothing(workdir, teacher_dir, reviews_parquet):
    stopper = StepRecorder(stop_at=1)
    result = train_teacher(teacher_cfg(reviews_parquet, workdir / "cancelled", model=str(teacher_dir)),
                           callbacks=[stopper])
    assert result.status == "cancelled" and result.output_dir is None and "step 1/3" in result.message
    assert not (workdir / "cancelled").exists()


def test_resume_after_a_crash_continues_to_the_same_final_step(workdir, teacher_dir, reviews_parquet):
    out = workdir / "crashed"
    cfg = teacher_cfg(reviews_parquet, out, model=str(teacher_dir), max_steps=4, save_steps=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_teacher(cfg, callbacks=[StepRecorder(crash_at=3)])
    assert not out.exists()
    assert last_trainer_checkpoint(out.with_name(out.name + INCOMPLETE)).name == "checkpoint-2"
    with pytest.raises(FileExistsError, match="--resume"):
        train_teacher(cfg)  # neither resume nor overwrite: refused, the checkpoint is kept
    recorder = StepRecorder()
    result = train_teacher(RunConfig.from_dict(cfg.to_dict() | {"resume": True}), callbacks=[recorder])
    assert result.status == "done" and result.metrics["global_step"] == 4
    assert recorder.steps == [3, 4]  # continued, not restarted
    assert is_complete(out) and not out.with_name(out.name + INCOMPLETE).exists()


def test_resume_after_an_interrupted_publish(workdir, teacher_dir, reviews_parquet, monkeypatch):
    out = workdir / "unpublished"
    cfg = teacher_cfg(reviews_parquet, out, model=str(teacher_dir), max_steps=4, save_steps=2)
    with monkeypatch.context() as mp:
        mp.setattr("kdapp.train.save_run", lambda *a, **k: (_ for _ in ()).throw(OSError("killed while saving")))
        with pytest.raises(OSError, match="killed"):
            train_teacher(cfg)
    assert not out.exists()
    final_checkpoint = last_trainer_checkpoint(out.with_name(out.name + INCOMPLETE))
    assert final_checkpoint.name == "checkpoint-4"
    trained = load_file(final_checkpoint / "model.safetensors")
    result = train_teacher(RunConfig.from_dict(cfg.to_dict() | {"resume": True}))
    assert result.metrics["global_step"] == 4 and is_complete(out)  # no extra step past max_steps
    published = load_file(out / "model.safetensors")
    assert all(torch.equal(published[k], v) for k, v in trained.items())


def test_resume_without_a_checkpoint_is_refused(workdir, teacher_dir, reviews_parquet):
    with pytest.raises(ValueError, match="no intermediate checkpoint"):
        train_teacher(teacher_cfg(reviews_parquet, workdir / "fresh", model=str(teacher_dir), resume=True))
