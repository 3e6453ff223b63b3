"""kdapp's CPU dropout: the same masks' statistics, exact attention math and gradients, and a clean swap in and out."""
import pytest
import torch
import torch.nn.functional as F

import kdapp.dropout as kd
from conftest import tiny_bert, tiny_distilbert


def reference_attention(q, k, v, mask, keep, p, scale):
    scores = (q @ k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return (scores.softmax(-1) * keep / (1 - p)) @ v


@pytest.mark.parametrize("block_bytes", [64, 1 << 20])  # one head per block, and a whole sample per block
def test_block_attention_matches_the_textbook_formula_and_its_gradients(monkeypatch, block_bytes):
    monkeypatch.setattr(kd, "BLOCK_BYTES", block_bytes)
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 7, 5, dtype=torch.double, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
    mask[1, :, :, 4:] = False  # padding of the second review
    grad = torch.randn(3, 4, 7, 5, dtype=torch.double)

    torch.manual_seed(1)
    out = kd.attention(q, k, v, mask, 0.3, 0.5)
    got = torch.autograd.grad(out, (q, k, v), grad)
    torch.manual_seed(1)  # the same seed draws the same mask
    keep = kd.keep_mask((3, 4, 7, 7), 0.3, kd.numpy_generator())
    ref = reference_attention(q, k, v, mask, keep, 0.3, 0.5)
    want = torch.autograd.grad(ref, (q, k, v), grad)

    assert 0 < (~keep).sum() < keep.numel()
    torch.testing.assert_close(out, ref)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_block_attention_passes_gradcheck():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 3, dtype=torch.double, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        torch.manual_seed(3)  # gradcheck calls f many times: the same mask each time
        return kd.attention(q, k, v, None, 0.2, 0.7)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_keep_mask_drops_p_of_the_elements_and_follows_torch_seed():
    torch.manual_seed(5)
    first = kd.keep_mask((400, 500), 0.1, kd.numpy_generator())
    torch.manual_seed(5)
    again = kd.keep_mask((400, 500), 0.1, kd.numpy_generator())
    other = kd.keep_mask((400, 500), 0.1, kd.numpy_generator())
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs((~first).float().mean().item() - 0.1) < 0.005  # 200,000 draws: 5 standard deviations is 0.0034
    torch.manual_seed(5)  # the numeric mask: the same draws, as 0 or the given value
    scaled = kd.scaled_keep_mask((400, 500), 0.1, kd.numpy_generator(), 2.5)
    assert scaled.dtype == torch.float32 and torch.equal(scaled, first.float() * 2.5)


def test_fast_dropout_scales_the_kept_elements_and_its_gradient():
    x = torch.ones(200, 300, requires_grad=True)
    y = kd.dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.01
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept)  # no gradient through a dropped element
    assert kd.dropout(x, 0.25, training=False) is x and kd.dropout(x, 0.0) is x
    bf16 = torch.ones(50, 40, dtype=torch.bfloat16)  # other dtypes: PyTorch's dropout, dtype kept
    assert kd.dropout(bf16, 0.25).dtype == torch.bfloat16


def _bert(seed=0):
    model = tiny_bert(layers=2, seed=seed)
    model.config.attention_probs_dropout_prob = 0.1
    return model


def test_use_fast_dropout_leaves_evaluation_exactly_as_it_was():
    stock, fast = _bert(), _bert()
    assert kd.use_fast_dropout(fast) == sum(type(m) is torch.nn.Dropout for m in stock.modules()) > 0
    assert fast.config._attn_implementation == kd.ATTN_IMPLEMENTATION
    ids = torch.randint(5, 20, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(input_ids=ids, attention_mask=mask).logits,
                                   stock.eval()(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("make", [_bert, tiny_distilbert])
def test_training_step_goes_through_the_block_attention(monkeypatch, make):
    model = make()
    kd.use_fast_dropout(model)
    calls = []
    real = kd.attention
    monkeypatch.setattr(kd, "attention", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    ids = torch.randint(5, 20, (4, 10))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    loss = model.train()(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    assert calls and all(p > 0 for p in calls)  # one call per layer, with the model's attention dropout
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    calls.clear()
    with torch.no_grad():
        model.eval()(input_ids=ids, attention_mask=mask)
    assert calls == []  # evaluation: transformers' sdpa


def test_masked_keys_get_no_attention_in_training():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 4) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, :, 3:] = False
    v_changed = v.clone()
    v_changed[0, :, 3:] += 100.0  # what a padded key carries must not reach the output
    torch.manual_seed(2)
    a = kd.attention(q, k, v, mask, 0.1, 0.5)
    torch.manual_seed(2)
    b = kd.attention(q, k, v_changed, mask, 0.1, 0.5)
    torch.testing.assert_close(a, b)


def test_restore_dropout_undoes_the_swap():
    model = _bert()
    kd.use_fast_dropout(model)
    kd.restore_dropout(model)
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, kd.FastDropout) for m in model.modules())


def test_non_cpu_or_no_dropout_calls_go_to_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    module = torch.nn.Module()
    module.is_causal = False
    out, _ = kd.cpu_dropout_attention_forward(module, q, k, v, None, dropout=0.0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v).transpose(1, 2))
