"""kdapp's CPU dropout and attention: the same masks' statistics, exact attention math and gradients (float32 and
bf16), the routing, and a clean swap in and out."""
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


@pytest.mark.parametrize("block_bytes", [64, 1 << 20, None])  # a head per block, a sample per block; whole
def test_attention_matches_the_textbook_formula_and_its_gradients(monkeypatch, block_bytes):
    if block_bytes is not None:
        monkeypatch.setattr(kd, "BLOCK_BYTES", block_bytes)
        monkeypatch.setattr(kd, "WHOLE_BYTES", 0)  # nothing fits: blocks
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

    assert kd.attention_path(q, k) == ("whole" if block_bytes is None else "blocks")
    assert 0 < (~keep).sum() < keep.numel()
    torch.testing.assert_close(out, ref)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_block_attention_passes_gradcheck(monkeypatch):
    monkeypatch.setattr(kd, "WHOLE_BYTES", 0)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 3, dtype=torch.double, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        torch.manual_seed(3)  # gradcheck calls f many times: the same mask each time
        return kd.attention(q, k, v, None, 0.2, 0.7)

    assert kd.attention_path(q, k) == "blocks"
    assert torch.autograd.gradcheck(f, (q, k, v))


def test_float32_whole_and_blocks_draw_the_same_mask_and_agree(monkeypatch):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[0, :, :, 4:] = False
    grad = torch.randn(2, 3, 6, 4)
    results = {}
    for whole_bytes in (kd.WHOLE_BYTES, 0):
        monkeypatch.setattr(kd, "WHOLE_BYTES", whole_bytes)
        torch.manual_seed(5)
        out = kd.attention(q, k, v, mask, 0.4, 0.5)
        results[kd.attention_path(q, k)] = (out, *torch.autograd.grad(out, (q, k, v), grad))
    assert set(results) == {"whole", "blocks"}
    for a, b in zip(results["whole"], results["blocks"]):
        torch.testing.assert_close(a, b)  # float32 rounding apart, the same numbers: the same mask was drawn


def test_attention_path_is_whole_in_bf16_and_while_float32_fits(monkeypatch):
    q = torch.empty(16, 12, 256, 64)  # the CPU-scale student's batch: 2 x 4 bytes x 16 x 12 x 256 x 256 = 100 MB
    assert kd.attention_path(q, q) == "whole"
    monkeypatch.setattr(kd, "WHOLE_BYTES", 2 * 4 * 16 * 12 * 256 * 256)
    assert kd.attention_path(q, q) == "whole"  # at the budget
    assert kd.attention_path(torch.empty(17, 12, 256, 64), q) == "blocks"  # one review more
    assert kd.attention_path(q[:, :, :1], q) == "whole"  # [CLS] alone against every key
    monkeypatch.setattr(kd, "WHOLE_BYTES", 0)
    assert kd.attention_path(q.bfloat16(), q.bfloat16()) == "whole"  # bf16 always
    assert kd.attention_path(q, q) == "blocks"


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
    half = torch.ones(50, 40, dtype=torch.float16)  # other dtypes: PyTorch's dropout, dtype kept
    assert kd.dropout(half, 0.25).dtype == torch.float16


def test_bf16_dropout_draws_the_float32_masks_and_scales_its_gradient():
    torch.manual_seed(7)
    want = kd.dropout(torch.ones(300, 200), 0.1) != 0
    torch.manual_seed(7)  # the same seed: the same draws, applied as a 0 / 1 bf16 mask
    x = torch.full((300, 200), 3.0, dtype=torch.bfloat16, requires_grad=True)
    y = kd.dropout(x, 0.1)
    assert y.dtype == torch.bfloat16 and torch.equal(y != 0, want)
    assert torch.equal(y[want], torch.full_like(y[want], 3.0 / 0.9))  # one rounding of x / (1 - p)
    y.float().sum().backward()
    assert torch.equal(x.grad[want], torch.full_like(x.grad[want], 1 / 0.9)) and not x.grad[~want].any()


def test_keep_mask_in_another_dtype_is_the_same_draws_as_ones_and_zeros():
    torch.manual_seed(5)
    keep = kd.keep_mask((300, 200), 0.1, kd.numpy_generator())
    torch.manual_seed(5)
    ones = kd.keep_mask((300, 200), 0.1, kd.numpy_generator(), torch.bfloat16)
    assert keep.dtype == torch.bool and ones.dtype == torch.bfloat16
    assert torch.equal(ones, keep.to(torch.bfloat16)) and set(ones.unique().tolist()) == {0.0, 1.0}


def test_bf16_dropout_and_attention_give_the_bool_mask_products_bit_for_bit():
    """The bf16 masks are 0 / 1 in bf16 (a same-dtype multiply); the products are those of a bool mask."""
    torch.manual_seed(0)
    x = torch.randn(6, 40, 32).bfloat16().requires_grad_()
    grad = torch.randn(6, 40, 32).bfloat16()
    torch.manual_seed(7)
    y = kd.dropout(x, 0.1)
    y.backward(grad)
    torch.manual_seed(7)
    keep = kd.keep_mask((6, 40, 32), 0.1, kd.numpy_generator())
    assert torch.equal(y, x.detach().mul(keep).mul_(1 / 0.9))
    assert torch.equal(x.grad, grad.mul(keep).mul_(1 / 0.9))

    q, k, v = (torch.randn(2, 3, 9, 8).bfloat16() for _ in range(3))
    torch.manual_seed(1)
    out = kd.attention(q, k, v, None, 0.2, 8 ** -0.5)
    torch.manual_seed(1)
    keep = kd.keep_mask((2, 3, 9, 9), 0.2, kd.numpy_generator())
    probs = torch.matmul(q * 8 ** -0.5, k.transpose(-1, -2)).softmax(-1)
    assert torch.equal(out, torch.matmul(probs.mul(keep).mul_(1 / 0.8), v))


def reference_probs_attention(q, k, v, mask, keep, p, scale):
    """The textbook formula with an additive mask, in the inputs' dtype step by step."""
    scores = (q * scale) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, torch.finfo(q.dtype).min)
    probs = scores.softmax(-1)
    return (probs * keep / (1 - p) if keep is not None else probs) @ v


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_whole_attention_passes_gradcheck(p):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 3, dtype=torch.double, requires_grad=True) for _ in range(3))
    bias = torch.zeros(2, 2, 4, 4, dtype=torch.double)
    bias[1, :, :, 3] = -1e9  # a padded key

    def f(q, k, v):
        torch.manual_seed(3)  # the same mask on every call
        return kd._WholeAttention.apply(q, k, v, bias, p, 0.7)

    assert torch.autograd.gradcheck(f, (q, k, v))


@pytest.mark.parametrize("p", [0.0, 0.2])
def test_bf16_attention_matches_the_formula_in_float32(p):
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 9, 8).bfloat16().requires_grad_() for _ in range(3))
    mask = torch.ones(3, 1, 9, 9, dtype=torch.bool)
    mask[1, :, :, 5:] = False
    grad = torch.randn(3, 4, 9, 8)
    torch.manual_seed(1)
    out = kd.attention(q, k, v, mask, p, 8 ** -0.5)
    assert out.dtype == torch.bfloat16
    got = torch.autograd.grad(out, (q, k, v), grad.bfloat16())
    torch.manual_seed(1)
    keep = kd.keep_mask((3, 4, 9, 9), p, kd.numpy_generator()) if p else None
    exact = [t.detach().float().requires_grad_() for t in (q, k, v)]
    ref = reference_probs_attention(*exact, mask, keep, p, 8 ** -0.5)
    want = torch.autograd.grad(ref, exact, grad)
    torch.testing.assert_close(out.float(), ref, atol=0.03, rtol=0.02)  # bf16: 8 bits of mantissa
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w, atol=0.06, rtol=0.05)


def _route(monkeypatch):
    calls = []
    real = kd.attention
    monkeypatch.setattr(kd, "attention", lambda *a, **k: calls.append((a[0].dtype, a[4])) or real(*a, **k))
    return calls


def test_bf16_training_takes_kdapp_attention_with_or_without_dropout(monkeypatch):
    calls = _route(monkeypatch)
    module = torch.nn.Module()
    module.is_causal = False
    q, k, v = (torch.randn(2, 2, 5, 4, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    for p in (0.0, 0.1):
        out, _ = kd.cpu_dropout_attention_forward(module, q, k, v, None, dropout=p)
        assert out.shape == (2, 5, 2, 4)
    assert calls == [(torch.bfloat16, 0.0), (torch.bfloat16, 0.1)]
    with torch.no_grad():  # inference: transformers' sdpa (PyTorch's fused forward)
        kd.cpu_dropout_attention_forward(module, q, k, v, None, dropout=0.0)
    kd.cpu_dropout_attention_forward(module, q.float(), k.float(), v.float(), None, dropout=0.0)  # fp32, p = 0
    assert len(calls) == 2
    frozen = [t.detach() for t in (q, k, v)]  # a frozen layer in training: no gradient, dropout still on
    out, _ = kd.cpu_dropout_attention_forward(module, *frozen, None, dropout=0.1)
    assert calls[2:] == [(torch.bfloat16, 0.1)] and not out.requires_grad
    kd.cpu_dropout_attention_forward(module, *(t.float() for t in frozen), None, dropout=0.1)  # float32 likewise
    assert calls[3:] == [(torch.float32, 0.1)]


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
def test_training_step_goes_through_kdapps_attention(monkeypatch, make):
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


@pytest.mark.parametrize("make", [_bert, tiny_distilbert])
def test_bf16_autocast_step_matches_pytorchs_own_path(make):
    """Without dropout the bf16 training step is the stock one up to bf16 rounding: logits and gradients."""
    ids = torch.randint(5, 20, (4, 10))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = torch.tensor([0, 1, 0, 1])
    results = []
    for fast in (False, True):
        model = make()
        for module in model.modules():  # every dropout off: the two paths compute the same thing
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model.config.attention_probs_dropout_prob = 0.0
        if fast:
            kd.use_fast_dropout(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.train()(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        results.append((out.logits.float(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (stock_logits, stock_grads), (fast_logits, fast_grads) = results
    torch.testing.assert_close(fast_logits, stock_logits, atol=0.05, rtol=0.05)
    assert fast_grads.keys() == stock_grads.keys()
    for name, grad in fast_grads.items():
        assert torch.isfinite(grad).all(), name
        cos = F.cosine_similarity(grad.flatten(), stock_grads[name].flatten(), dim=0)
        assert cos > 0.98 or grad.abs().max() < 1e-6, (name, cos.item())
