"""Loading models and tokenizers (one clear error each), and DistilBERT-style students made from a teacher."""
import shutil
import time

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel, BertTokenizerFast

from conftest import VOCAB, tiny_bert, tiny_distilbert
from kdapp.models import (LABELS, ModelError, check_same_tokenizer, count_parameters, load_model, load_pair,
                          load_tokenizer, set_attention_dropout, set_hidden_dropout, student_from_teacher,
                          student_layer_map)


def _copy_weights_only(src, dst):
    dst.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(src / name, dst / name)
    return dst


def _tokenizer_with(words, folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True)


# ---------------------------------------------------------------- loading
def test_load_pair_from_a_folder(teacher_dir, tokenizer):
    model, tok = load_pair(str(teacher_dir))
    assert type(model).__name__ == "BertForSequenceClassification"
    assert tok.get_vocab() == tokenizer.get_vocab()
    assert model.config.num_labels == 2 and model.config.id2label == LABELS
    reference = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    batch = tok(["the movie was great"], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        assert torch.allclose(model.eval()(**batch).logits, reference(**batch).logits)


def test_bare_encoder_gets_a_two_label_head(tmp_path, tokenizer):
    folder = tmp_path / "encoder"
    full = tiny_bert(layers=2)
    BertModel(full.config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    model = load_model(str(folder))
    assert model.classifier.out_features == 2 and model.config.id2label == LABELS


def test_folder_without_tokenizer_files_is_refused(tmp_path, teacher_dir):
    folder = _copy_weights_only(teacher_dir, tmp_path / "no-tok")
    with pytest.raises(ModelError, match="no tokenizer files.*tokenizer.save_pretrained"):
        load_pair(str(folder))
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_tokenizer(str(folder))


def test_folder_with_a_tokenizer_of_another_vocabulary_is_refused(tmp_path, teacher_dir):
    folder = _copy_weights_only(teacher_dir, tmp_path / "wrong-tok")
    _tokenizer_with(VOCAB[:12], tmp_path / "small").save_pretrained(folder)
    with pytest.raises(ModelError, match=r"tokenizer has 12 tokens but the model's vocabulary has 29"):
        load_pair(str(folder))


def test_folder_with_only_a_tokenizer_config_is_refused(tmp_path, teacher_dir):
    """transformers 5 builds a 5-token vocabulary from tokenizer_config.json alone (STACK_NOTES 8)."""
    folder = _copy_weights_only(teacher_dir, tmp_path / "config-only")
    shutil.copy(teacher_dir / "tokenizer_config.json", folder / "tokenizer_config.json")
    if len(AutoTokenizer.from_pretrained(folder)) == len(VOCAB):
        pytest.skip("this transformers version restores the vocabulary from the config")
    with pytest.raises(ModelError, match="do not belong together"):
        load_pair(str(folder))


def test_pickle_weights_are_refused(tmp_path, teacher_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for f in teacher_dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, folder / f.name)
    torch.save(AutoModelForSequenceClassification.from_pretrained(teacher_dir).state_dict(),
               folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match=r"no model.safetensors.*pytorch_model.bin.*pickle"):
        load_pair(str(folder))
    with pytest.raises(ModelError, match="pickle"):
        load_model(str(folder))


def test_folder_without_config_is_refused(tmp_path):
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_pair(str(tmp_path / "empty-run"))


def test_unknown_hub_id_offline_fails_fast(in_tmp_cwd):
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"unreachable.*--model /path/to/local/folder"):
        load_pair("someone/no-such-model-kdapp")
    with pytest.raises(ModelError, match="unreachable"):
        load_model("no-such-model-kdapp")
    assert time.perf_counter() - start < 10  # no 23 s of retries


def test_missing_local_path(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_pair(str(tmp_path / "nowhere" / "model"))


def test_check_same_tokenizer(tmp_path, tokenizer):
    same = _tokenizer_with(VOCAB, tmp_path / "same")
    check_same_tokenizer(tokenizer, same)  # no error
    swapped = list(VOCAB)
    swapped[5], swapped[6] = swapped[6], swapped[5]  # same size and words, other ids
    with pytest.raises(ModelError, match="tokenizers differ .*2 entries differ"):
        check_same_tokenizer(tokenizer, _tokenizer_with(swapped, tmp_path / "swapped"))
    with pytest.raises(ModelError, match="29 vs 12 tokens"):
        check_same_tokenizer(tokenizer, _tokenizer_with(VOCAB[:12], tmp_path / "small"))
    cased = BertTokenizerFast.from_pretrained(str(tmp_path / "same"), do_lower_case=False)
    with pytest.raises(ModelError, match="lower-casing"):
        check_same_tokenizer(tokenizer, cased)


# ---------------------------------------------------------------- students from a teacher
def _layer_state(model, i):
    base = getattr(model, model.base_model_prefix)
    layers = base.encoder.layer if hasattr(base, "encoder") else base.transformer.layer
    return layers[i].state_dict()


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_layer_map():
    assert student_layer_map(4) == [0, 2]
    assert student_layer_map(12) == [0, 2, 4, 6, 8, 10]
    assert student_layer_map(6, 3) == [0, 2, 4]
    assert student_layer_map(12, 4) == [0, 3, 6, 9]
    assert student_layer_map(4, 3) == [0, 1, 2]
    assert student_layer_map(1) == [0]
    with pytest.raises(ModelError, match=r"student_layers must be in \[1, 4\]"):
        student_layer_map(4, 5)


def test_student_copies_every_other_layer_embeddings_and_head(tiny_teacher):
    student = student_from_teacher(tiny_teacher)
    assert student.config.num_hidden_layers == 2 and tiny_teacher.config.num_hidden_layers == 4
    assert student.config.kdapp_layer_map == [0, 2]
    assert len(student.bert.encoder.layer) == 2
    for s, t in enumerate([0, 2]):
        assert _same(_layer_state(student, s), _layer_state(tiny_teacher, t))
    assert not _same(_layer_state(student, 1), _layer_state(tiny_teacher, 1))
    assert _same(student.bert.embeddings.state_dict(), tiny_teacher.bert.embeddings.state_dict())
    assert _same(student.bert.pooler.state_dict(), tiny_teacher.bert.pooler.state_dict())
    assert _same(student.classifier.state_dict(), tiny_teacher.classifier.state_dict())
    assert count_parameters(student) < count_parameters(tiny_teacher)
    assert student.training and all(p.requires_grad for p in student.parameters())


def test_student_is_independent_of_the_teacher(tiny_teacher):
    student = student_from_teacher(tiny_teacher)
    with torch.no_grad():
        student.bert.encoder.layer[0].attention.self.query.weight.add_(1.0)
        student.bert.embeddings.word_embeddings.weight.add_(1.0)
    assert not torch.equal(student.bert.encoder.layer[0].attention.self.query.weight,
                           tiny_teacher.bert.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(student.bert.embeddings.word_embeddings.weight,
                           tiny_teacher.bert.embeddings.word_embeddings.weight)


def test_student_with_a_chosen_number_of_layers():
    teacher = tiny_bert(layers=6, seed=3)
    student = student_from_teacher(teacher, student_layers=3)
    assert student.config.num_hidden_layers == 3 and student.config.kdapp_layer_map == [0, 2, 4]
    for s, t in enumerate([0, 2, 4]):
        assert _same(_layer_state(student, s), _layer_state(teacher, t))
    assert _same(_layer_state(student_from_teacher(teacher, 1), 0), _layer_state(teacher, 0))


def test_student_from_a_distilbert_teacher():
    teacher = tiny_distilbert(layers=4)
    student = student_from_teacher(teacher)
    assert student.config.n_layers == 2 and len(student.distilbert.transformer.layer) == 2
    assert _same(_layer_state(student, 1), _layer_state(teacher, 2))


def test_student_saves_and_reloads(tmp_path, tiny_teacher, tokenizer):
    student = student_from_teacher(tiny_teacher).eval()
    student.save_pretrained(tmp_path / "student")
    tokenizer.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert reloaded.config.num_hidden_layers == 2 and len(reloaded.bert.encoder.layer) == 2
    assert reloaded.config.kdapp_layer_map == [0, 2]
    batch = tokenizer(["the movie was great", "awful plot"], padding=True, return_tensors="pt",
                      return_token_type_ids=False)
    with torch.no_grad():
        assert torch.allclose(student(**batch).logits, reloaded(**batch).logits, atol=1e-6)
    model, _ = load_pair(str(tmp_path / "student"))  # the library's loader accepts it too
    assert len(model.bert.encoder.layer) == 2


# ---------------------------------------------------------------- attention dropout
@pytest.mark.parametrize("make, key", [(tiny_bert, "attention_probs_dropout_prob"), (tiny_distilbert, "attention_dropout")])
def test_attention_dropout_is_set_on_every_layer_and_in_the_config(make, key):
    """With every other dropout off, p > 0 makes two training forwards differ and p = 0 makes them equal."""
    model = make(layers=2).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids = torch.randint(5, len(VOCAB), (2, 12))
    torch.manual_seed(0)
    assert set_attention_dropout(model, 0.5) == 2
    assert not torch.allclose(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert set_attention_dropout(model, 0.0) == 2
    assert model.config.to_dict()[key] == 0.0
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


# ---------------------------------------------------------------- hidden dropout
@pytest.mark.parametrize("make, keys, count", [
    (tiny_bert, ("hidden_dropout_prob", "classifier_dropout"), 6),  # embeddings, 2 x (attention out, FFN out), head
    (tiny_distilbert, ("dropout", "seq_classif_dropout"), 4),  # embeddings, 2 x FFN out, head
])
def test_hidden_dropout_sets_every_dropout_but_the_attentions_and_the_config(make, keys, count):
    """With the attention dropout off, p > 0 makes two training forwards differ and p = 0 makes them equal; the
    attention's own dropout is left as it was."""
    model = make(layers=2).train()
    set_attention_dropout(model, 0.0)
    ids = torch.randint(5, len(VOCAB), (2, 12))
    torch.manual_seed(0)
    assert set_hidden_dropout(model, 0.5) == count
    assert not torch.allclose(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert set_hidden_dropout(model, 0.0) == count
    assert all(model.config.to_dict()[key] == 0.0 for key in keys)
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    set_attention_dropout(model, 0.3)
    set_hidden_dropout(model, 0.0)
    ps = sorted(m.p for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert ps == [0.0] * count + [0.3, 0.3]


def test_hidden_dropout_on_a_model_without_dropout_is_refused():
    with pytest.raises(ValueError, match="no dropout outside the attention"):
        set_hidden_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.0)


def test_attention_dropout_on_a_model_without_self_attention_is_refused():
    with pytest.raises(ValueError, match="no self-attention layer"):
        set_attention_dropout(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.0)
