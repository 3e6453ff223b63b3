"""The last layer at [CLS] only (kdapp/cls_only.py): the same logits and gradients, a plain checkpoint."""
import pytest
import torch
from transformers import BertConfig, BertModel

import kdapp.dropout as kd
from conftest import tiny_bert, tiny_distilbert
from kdapp.cls_only import cls_only, is_cls_only, restore_last_layer, supports_cls_only, use_cls_only
from kdapp.inference import logits_from_ids


def _no_dropout(make):
    model = make()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for name in ("attention_probs_dropout_prob", "attention_dropout"):
        if hasattr(model.config, name):
            setattr(model.config, name, 0.0)
    for m in model.modules():  # the attention modules read their p from a Dropout too
        if hasattr(m, "dropout") and isinstance(m.dropout, torch.nn.Dropout):
            m.dropout.p = 0.0
    return model


def _batch():
    torch.manual_seed(3)
    ids = torch.randint(5, 20, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return ids, mask, torch.tensor([0, 1, 1])


def _loss_and_grads(model, ids, mask, labels):
    model.zero_grad()
    out = model.train()(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("path", ["sdpa", "eager", "kdapp"])
@pytest.mark.parametrize("make", [tiny_bert, tiny_distilbert])
def test_same_logits_and_gradients_as_the_full_last_layer(make, path):
    model = _no_dropout(make)
    if path == "eager":
        model.set_attn_implementation("eager")
    elif path == "kdapp":
        kd.use_fast_dropout(model)
    ids, mask, labels = _batch()
    full_logits, full_grads = _loss_and_grads(model, ids, mask, labels)
    assert use_cls_only(model) and is_cls_only(model)
    logits, grads = _loss_and_grads(model, ids, mask, labels)
    torch.testing.assert_close(logits, full_logits)
    assert grads.keys() == full_grads.keys()  # every weight of the last layer still learns
    for name in grads:
        torch.testing.assert_close(grads[name], full_grads[name], msg=name)
    with torch.no_grad():
        model.eval()
        restore_last_layer(model)
        full = model(input_ids=ids, attention_mask=mask).logits
        use_cls_only(model)
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, full)


@pytest.mark.parametrize("make", [tiny_bert, tiny_distilbert])
def test_padding_reaches_cls_neither_way(make):
    model = make().eval()
    assert use_cls_only(model)
    ids, mask, _ = _batch()
    changed = ids.clone()
    changed[2, 3:] = 7  # what the padded positions hold must not matter
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=changed, attention_mask=mask).logits)


def test_training_with_dropout_runs_the_block_attention_for_one_query(monkeypatch):
    model = tiny_bert(layers=2)
    model.config.attention_probs_dropout_prob = 0.1
    kd.use_fast_dropout(model)
    use_cls_only(model)
    shapes = []
    real = kd.attention
    monkeypatch.setattr(kd, "attention", lambda *a, **k: shapes.append(tuple(a[0].shape)) or real(*a, **k))
    ids, mask, labels = _batch()
    loss = model.train()(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    assert [s[2] for s in shapes] == [12, 1]  # queries: every position in layer 1, [CLS] only in the last
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_the_switch_leaves_the_weights_and_is_undone():
    model = tiny_bert(layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_cls_only(model) and use_cls_only(model)  # twice: still switched, nothing else
    assert type(model.bert.encoder.layer[0]).__name__ == "BertLayer"  # only the last layer
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    restore_last_layer(model)
    assert not is_cls_only(model) and type(model.bert.encoder.layer[-1]).__name__ == "BertLayer"


def test_models_it_cannot_switch_are_left_alone():
    encoder = BertModel(BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32))
    assert not supports_cls_only(encoder) and not use_cls_only(encoder)  # no classifier: every position is output
    decoder = tiny_bert()
    decoder.config.is_decoder = True
    assert not use_cls_only(decoder) and not is_cls_only(decoder)


def test_context_restores_only_what_it_switched():
    model = tiny_bert()
    with cls_only(model):
        assert is_cls_only(model)
    assert not is_cls_only(model)
    use_cls_only(model)
    with cls_only(model):
        pass
    assert is_cls_only(model)  # switched before the block: stays so
    other = tiny_bert()
    with cls_only(other, enabled=False):
        assert not is_cls_only(other)


def test_inference_path_gives_the_full_forwards_logits_and_leaves_the_model_as_it_was():
    model = tiny_bert().eval()
    ids = [[2, 5, 6, 7, 3], [2, 8, 3], [2, 9, 10, 11, 12, 13, 3]]
    fast = logits_from_ids(model, ids, pad_id=0, batch_size=2)
    full = logits_from_ids(model, ids, pad_id=0, batch_size=2, cls_only=False)
    assert fast.shape == (3, 2) and abs(fast - full).max() < 1e-5
    assert not is_cls_only(model)
