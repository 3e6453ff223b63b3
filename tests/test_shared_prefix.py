"""The student's frozen bottom handed over by the teacher (kdapp/shared_prefix.py): when it applies, and that the
student started there computes what its own layers would (the training runs that use it: tests/test_train.py)."""
import pytest
import torch

from conftest import tiny_bert, tiny_distilbert
from kdapp.cache import teacher_logits
from kdapp.inference import logits_from_ids, pad_batch, prepare_model, teacher_forward
from kdapp.models import encoder_layers, set_attention_dropout, set_hidden_dropout, student_from_teacher
from kdapp.shared_prefix import bottom_only, fill_states, pad_states, shared_layers, starting_at

IDS = [[2, 5, 6, 7, 8, 9, 3], [2, 10, 3], [2, 11, 12, 13, 3], [2, 14, 15, 16, 17, 18, 19, 20, 3], [2, 21, 3]]


def frozen_student(teacher, n_layers: int = 2, frozen: int = 1, dropout: float = 0.0):
    """A student made from the teacher, its embeddings and first `frozen` layers frozen, dropout at `dropout`."""
    student = student_from_teacher(teacher, n_layers)
    set_attention_dropout(student, dropout)
    set_hidden_dropout(student, dropout)
    for module in (student.base_model.embeddings, *encoder_layers(student)[:frozen]):
        module.requires_grad_(False)
    return student


@pytest.fixture
def pair():
    teacher = tiny_bert(layers=4).eval()
    return teacher, frozen_student(teacher)


def test_a_frozen_dropout_free_copy_of_the_teachers_first_layer_is_shared(pair):
    teacher, student = pair
    assert shared_layers(teacher, student) == 1  # student layer 1 is the teacher's layer 2: the sharing stops there


@pytest.mark.parametrize("change", ["dropout", "trained", "other weights", "bf16 teacher", "int8 teacher"])
def test_nothing_is_shared_unless_the_bottom_is_the_teachers_frozen_and_dropout_free(change):
    teacher = tiny_bert(layers=4).eval()
    student = frozen_student(teacher, dropout=0.1 if change == "dropout" else 0.0)
    if change == "trained":
        student.bert.encoder.layer[0].output.dense.weight.requires_grad_(True)
        assert shared_layers(teacher, student) == 0
        return
    if change == "other weights":
        student = frozen_student(tiny_bert(layers=4, seed=1).eval())
    if change.endswith("teacher"):
        teacher = prepare_model(teacher, change.split()[0], "cpu")
    assert shared_layers(teacher, student) == 0


def test_distilbert_students_share_their_teachers_bottom_too():
    teacher = tiny_distilbert(layers=3).eval()
    assert shared_layers(teacher, frozen_student(teacher, n_layers=2)) == 1
    assert shared_layers(tiny_bert(layers=4).eval(), frozen_student(teacher, n_layers=2)) == 0  # not its teacher


def test_the_student_started_from_the_teachers_state_computes_what_its_own_layers_do(pair):
    teacher, student = pair
    student.train()  # training mode: dropout is 0, so the forward is deterministic
    inputs = pad_batch(IDS, 0, "cpu")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    own = student(**inputs).logits
    own.sum().backward()
    own_grads = [p.grad.clone() for p in student.parameters() if p.requires_grad]
    student.zero_grad()
    with torch.no_grad():
        states = teacher(**inputs, output_hidden_states=True).hidden_states[1]
    with starting_at(student, states, 1):
        handed = student(**inputs).logits
    handed.sum().backward()
    torch.testing.assert_close(handed, own, atol=1e-5, rtol=1e-5)
    for got, want in zip((p.grad for p in student.parameters() if p.requires_grad), own_grads):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # afterwards the student computes its own again, and its weights and state dict are as they were
    assert type(student.bert.embeddings).__name__ == "BertEmbeddings"
    assert type(student.bert.encoder.layer[0]).__name__ == "BertLayer"
    assert not hasattr(student.bert.embeddings, "kdapp_handed")
    torch.testing.assert_close(student(**inputs).logits, own)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_the_student_is_restored_when_its_forward_fails(pair):
    _, student = pair
    with pytest.raises(RuntimeError), starting_at(student, torch.zeros(1, 3, 64), 1):
        raise RuntimeError("a failing step")
    assert type(student.bert.embeddings).__name__ == "BertEmbeddings"
    assert not hasattr(student.bert.embeddings, "kdapp_handed")


@pytest.mark.parametrize("workers", [1, 2])
def test_teacher_forward_returns_each_rows_state_at_the_batchs_length(pair, workers):
    teacher, _ = pair
    inputs = pad_batch(IDS, 0, "cpu")
    with torch.no_grad():
        whole = teacher(**inputs, output_hidden_states=True)
    logits, states = teacher_forward(teacher, inputs, workers=workers, hidden_layer=1)
    assert states.shape == whole.hidden_states[1].shape
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(states[real], whole.hidden_states[1][real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits, whole.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(teacher_forward(teacher, inputs, workers=workers), logits)  # without states: logits alone


@pytest.mark.parametrize("workers", [1, 2])
def test_the_cache_pass_keeps_each_rows_state_in_input_order(pair, workers):
    teacher, _ = pair
    states = [None] * len(IDS)
    logits = logits_from_ids(teacher, IDS, 0, batch_size=2, workers=workers, hidden_layer=1, states=states)
    for row, state in zip(IDS, states):
        with torch.no_grad():
            alone = teacher(**pad_batch([row], 0, "cpu"), output_hidden_states=True).hidden_states[1][0]
        assert state.shape == (len(row), 64)
        torch.testing.assert_close(state, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(logits),
                               torch.from_numpy(logits_from_ids(teacher, IDS, 0, batch_size=2)))
    padded = pad_states(states[:2], 9)
    assert padded.shape == (2, 9, 64) and torch.equal(padded[1, 3:], torch.zeros(6, 64))


def test_rows_read_from_the_logit_file_get_no_state(pair, tmp_path):
    teacher, _ = pair
    teacher_logits(teacher, IDS[:2], 0, cache_dir=tmp_path)
    states = [None] * len(IDS)
    teacher_logits(teacher, IDS, 0, cache_dir=tmp_path, hidden_layer=1, states=states)
    assert [s is None for s in states] == [True, True, False, False, False]


def test_rows_from_the_logit_file_get_their_state_from_the_teachers_first_layers_alone(pair):
    teacher, _ = pair
    states = [None] * len(IDS)
    logits_from_ids(teacher, IDS, 0, hidden_layer=1, states=states)
    wanted, states[1:4] = list(states), [None] * 3
    assert fill_states(teacher, IDS, 0, 1, states, batch_size=2) == 3
    for got, want in zip(states, wanted):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert fill_states(teacher, IDS, 0, 1, states) == 0  # nothing left to fill
    assert len(teacher.bert.encoder.layer) == 4 and not teacher.training  # the teacher is whole again


def test_bottom_only_runs_the_first_layers_and_gives_the_whole_back_even_on_error(pair):
    teacher, _ = pair
    with pytest.raises(RuntimeError), bottom_only(teacher, 1):
        assert len(teacher.bert.encoder.layer) == 1
        raise RuntimeError("a failing pass")
    assert len(teacher.bert.encoder.layer) == 4
