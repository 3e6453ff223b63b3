"""Dropout and attention for CPU training at the cost they should have: the same Bernoulli masks, drawn faster.

On CPU, PyTorch draws every dropout mask with `bernoulli_`, element by element, and any attention dropout sends
`scaled_dot_product_attention` to its unfused path, which writes and re-reads the whole (batch, head, query, key)
tensor several times. Here:

- masks come from numpy's PCG64 as 16-bit draws (its raw 64-bit output cut in four), seeded from torch's default
  generator so that `torch.manual_seed` / `transformers.set_seed` make runs repeatable; an element is kept when its
  draw is at least round(p * 65536), so p is rounded to a multiple of 1/65536 (0.1 becomes 0.100006). Masks are
  applied by numpy's multiply, which reads the bool mask as numbers on the fly (PyTorch's first makes a float copy
  of it), or made as floats in the same pass (0 or the 1 / (1 - p) scale) where the tensor is small;
- attention with dropout runs as whole-tensor matmuls with PyTorch's softmax kernels, keeping the probabilities and
  the mask (as a float tensor) for the backward pass, while they fit WHOLE_BYTES per layer (float32 at the CPU-scale
  sizes: a 3-layer MiniLM student on 16 reviews of 256 tokens keeps 100 MB a layer). Larger calls run block by block
  (one sample and a few heads at a time, sized to stay in cache), and their backward pass recomputes the softmax
  from q and k instead of storing it (as FlashAttention does), keeping only the 1-byte keep mask.

In bfloat16 (training under CPU bf16 autocast) numpy has no type for the tensors, so the same draws make a 0 / 1
mask in bfloat16 that torch applies (x * keep * 1 / (1 - p), rounded once). A bf16 mask, not a bool one: PyTorch
multiplies a bf16 tensor by a bool mask through a per-element type conversion, much slower than a same-dtype
multiply: the bf16 student's step ran 1.15x faster this way with attention dropout 0.1 and 1.05x with 0
(`python benchmarks/dropout_masks.py`; docs/speed.md). The products are bit for bit the same (x * 1 and x * 0 either
way).

Attention there runs as whole-tensor bf16 matmuls with PyTorch's fused softmax kernels (fp32 inside), with or
without dropout: PyTorch's fused CPU attention has a slow bf16 backward (`python benchmarks/profile_kd_step.py
--bf16`: a 3-layer student's forward, backward and optimizer step on 16 reviews of 256 tokens took 0.54 s with
PyTorch's path and 0.45 s this way without attention dropout, 0.85 and 0.57 s with it, before the bf16 masks). It
keeps the probabilities for the backward pass (2 bytes per (head, query, key)), as eager attention does, and with
dropout the mask (2 bytes more).

What it computes is the textbook attention: softmax(q k^T * scale + mask) * keep / (1 - p) @ v. Evaluation, float32
attention with a dropout of 0, any device other than CPU and any other dtype go to PyTorch's own dropout and
transformers' own sdpa path unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTN_IMPLEMENTATION = "kdapp_cpu_dropout"
BLOCK_BYTES = 1 << 20  # one block of attention scores: about a core's share of L2 on the dev machine
# float32 attention runs whole while what it keeps for the backward pass (the probabilities and the float mask, 8
# bytes per (sample, head, query, key)) fits this per layer; larger calls run in blocks and keep a 1-byte mask
WHOLE_BYTES = 1 << 27
_BITS = 16


def numpy_generator() -> np.random.Generator:
    """A fresh PCG64 seeded from torch's default generator (so torch's seed decides every mask)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))


def _kept(shape: tuple[int, ...], p: float, generator: np.random.Generator) -> np.ndarray:
    """Bool array, True with probability 1 - p: uniform 16-bit draws at least round(p * 65536)."""
    n = math.prod(shape)
    draws = generator.bit_generator.random_raw(-(-n // 4)).view(np.uint16)[:n].reshape(shape)
    return draws >= round(p * (1 << _BITS))


def keep_mask(shape: tuple[int, ...], p: float, generator: np.random.Generator,
              dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Bool mask, True with probability 1 - p (p rounded to a multiple of 1/65536); with another dtype the same
    draws as 1 (kept) or 0 in that dtype, for a same-dtype multiply."""
    keep = torch.from_numpy(_kept(shape, p, generator))
    return keep if dtype == torch.bool else keep.view(torch.uint8).to(dtype)


def scaled_keep_mask(shape: tuple[int, ...], p: float, generator: np.random.Generator,
                     value: float = 1.0) -> torch.Tensor:
    """`keep_mask` as float32: `value` where kept, 0 where dropped (the same draws from the same generator state)."""
    out = np.empty(shape, np.float32)
    np.multiply(_kept(shape, p, generator), np.float32(value), out=out)
    return torch.from_numpy(out)


class _MaskedScale(torch.autograd.Function):
    """x * mask, where the mask holds 0 or 1 / (1 - p): one multiply each way."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


class _KeepScale(torch.autograd.Function):
    """x * keep * scale with a 0 / 1 keep mask in x's dtype (for dtypes numpy has no type for): the same each way."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Like torch.nn.functional.dropout; the fast mask for float32 and bfloat16 on CPU, PyTorch's own elsewhere."""
    if not training or p == 0:
        return x
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or p >= 1:
        return torch.nn.functional.dropout(x, p, training)
    if x.dtype == torch.bfloat16:
        return _KeepScale.apply(x, keep_mask(tuple(x.shape), p, numpy_generator(), x.dtype), 1.0 / (1.0 - p))
    return _MaskedScale.apply(x, scaled_keep_mask(tuple(x.shape), p, numpy_generator(), 1.0 / (1.0 - p)))


class FastDropout(torch.nn.Dropout):
    """nn.Dropout drawing its CPU masks with `keep_mask` (no parameters: checkpoints are unchanged)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return super().forward(x)
        return dropout(x, self.p, self.training)


def _blocks(batch: int, heads: int, q_len: int, k_len: int):
    per_block = max(1, min(heads, BLOCK_BYTES // (4 * q_len * k_len)))
    for b in range(batch):
        for h in range(0, heads, per_block):
            yield b, slice(h, min(h + per_block, heads))


def _probs(q, k, bias, b, hs):
    """Softmax of one block's scores (q already carries the 1/sqrt(d) scale)."""
    scores = torch.matmul(q[b, hs], k[b, hs].transpose(-1, -2))
    if bias is not None:
        scores.add_(bias[b] if bias.shape[1] == 1 else bias[b, hs])
    return scores.softmax(-1)


class _BlockAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) * keep / (1 - p) @ v over (sample, heads) blocks; backward recomputes the softmax.

    Scalars are folded where the tensors are small: the scale into q, 1 / (1 - p) into the (length x dim) results.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, p, scale):
        batch, heads, q_len, _ = q.shape
        keep = keep_mask((batch, heads, q_len, k.shape[2]), p, numpy_generator())
        kept = keep.numpy()
        q_scaled = q * scale
        out = q.new_empty(q.shape[:-1] + v.shape[-1:])
        for b, hs in _blocks(batch, heads, q_len, k.shape[2]):
            probs = _probs(q_scaled, k, bias, b, hs)
            np.multiply(probs.numpy(), kept[b, hs], out=probs.numpy())  # no float copy of the mask
            torch.matmul(probs, v[b, hs], out=out[b, hs])
        out.mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q_scaled, k, v, bias, keep, out)
        ctx.p, ctx.scale = p, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q_scaled, k, v, bias, keep, out = ctx.saved_tensors
        inv, scale = 1.0 / (1.0 - ctx.p), ctx.scale
        grad_out = grad_out.contiguous()
        # rowsum(dP * P) = rowsum(dO * O), with or without dropout; divided by inv because dP = (dO v^T) * keep * inv
        delta = (grad_out * out).sum(-1, keepdim=True).mul_(1.0 - ctx.p)
        dq, dk, dv = torch.empty_like(q_scaled), torch.empty_like(k), torch.empty_like(v)
        for b, hs in _blocks(q_scaled.shape[0], q_scaled.shape[1], q_scaled.shape[2], k.shape[2]):
            probs = _probs(q_scaled, k, bias, b, hs)
            kept = keep[b, hs].to(probs.dtype)  # one float copy for its two uses
            grad_scores = torch.matmul(grad_out[b, hs], v[b, hs].transpose(-1, -2)).mul_(kept)
            grad_scores.sub_(delta[b, hs]).mul_(probs)  # dS / (inv * scale)
            torch.matmul(grad_scores, k[b, hs], out=dq[b, hs])
            torch.matmul(grad_scores.transpose(-1, -2), q_scaled[b, hs], out=dk[b, hs])  # q_scaled: scale folded
            torch.matmul(probs.mul_(kept).transpose(-1, -2), grad_out[b, hs], out=dv[b, hs])
        dq.mul_(inv * scale)
        dk.mul_(inv)
        dv.mul_(inv)
        return dq, dk, dv, None, None, None


class _WholeAttention(torch.autograd.Function):
    """softmax(q k^T * scale + bias) [* keep / (1 - p)] @ v in whole-tensor matmuls, in the inputs' dtype (bf16:
    fp32 accumulation inside the matmul and softmax kernels); keeps the probabilities for the backward pass."""

    @staticmethod
    def forward(ctx, q, k, v, bias, p, scale):
        q_scaled = q * scale
        scores = torch.matmul(q_scaled, k.transpose(-1, -2))
        if bias is not None:
            scores.add_(bias)
        probs = scores.softmax(-1)
        keep, weights = None, probs
        if p > 0:
            keep = keep_mask(tuple(probs.shape), p, numpy_generator(), probs.dtype)
            weights = probs.mul(keep).mul_(1.0 / (1.0 - p))
        ctx.save_for_backward(q_scaled, k, v, probs, keep)
        ctx.p, ctx.scale = p, scale
        return torch.matmul(weights, v)

    @staticmethod
    def backward(ctx, grad_out):
        q_scaled, k, v, probs, keep = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_weights = torch.matmul(grad_out, v.transpose(-1, -2))
        weights = probs
        if keep is not None:
            inv = 1.0 / (1.0 - ctx.p)
            grad_weights.mul_(keep).mul_(inv)
            weights = probs.mul(keep).mul_(inv)
        grad_scores = torch._softmax_backward_data(grad_weights, probs, -1, probs.dtype)
        dq = torch.matmul(grad_scores, k).mul_(ctx.scale)
        dk = torch.matmul(grad_scores.transpose(-1, -2), q_scaled)  # q_scaled: scale folded
        dv = torch.matmul(weights.transpose(-1, -2), grad_out)
        return dq, dk, dv, None, None, None


def attention_path(query: torch.Tensor, key: torch.Tensor) -> str:
    """How `attention` runs these (batch, heads, length, dim) tensors: "whole" (bfloat16 always; other dtypes while
    the probabilities and the float mask it keeps fit WHOLE_BYTES) or "blocks" (the softmax recomputed in the
    backward pass, a 1-byte mask kept)."""
    if query.dtype == torch.bfloat16:
        return "whole"
    batch, heads, q_len, _ = query.shape
    return "whole" if 2 * batch * heads * q_len * key.shape[2] * query.element_size() <= WHOLE_BYTES else "blocks"


def attention(query, key, value, attention_mask, p: float, scale: float) -> torch.Tensor:
    """Attention with dropout p on (batch, heads, length, dim) tensors; attention_mask: bool (True = attend),
    additive float, or None. Returns (batch, heads, q_len, dim). Whole tensors, keeping the probabilities for the
    backward pass, in bfloat16 and where they fit WHOLE_BYTES (float32 at the CPU-scale sizes: a 1.06x faster
    student step than in blocks, `python benchmarks/fp32_attention.py`); otherwise block by block (attention_path)."""
    bias = attention_mask
    if bias is not None and bias.dtype == torch.bool:
        bias = torch.zeros(bias.shape, dtype=query.dtype).masked_fill_(~bias, torch.finfo(query.dtype).min)
    if bias is not None:
        bias = bias.to(query.dtype).expand(bias.shape[0] if bias.shape[0] > 1 else query.shape[0], *bias.shape[1:])
    query, key, value = (t.contiguous() for t in (query, key, value))
    if attention_path(query, key) == "whole":
        with torch.autocast("cpu", enabled=False):  # already in its dtype: nothing to cast (bf16: softmax in bf16)
            return _WholeAttention.apply(query, key, value, bias, p, scale)
    return _BlockAttention.apply(query, key, value, bias, p, scale)


def _kdapp_path(query, key, dropout: float, kwargs: dict) -> bool:
    """Whether kdapp's attention serves this call: CPU, plain self-attention, float32 or bfloat16 with dropout (its
    masks are drawn faster), and bfloat16 without dropout while training (PyTorch's fused kernel is faster for float32
    without dropout and for inference). With dropout that includes a frozen layer in training, whose query needs no
    gradient: PyTorch's kernel with dropout made a bf16 step with the first layer frozen no faster than one training
    every layer (`python benchmarks/frozen_layers.py --recipe preset`)."""
    if query.device.type != "cpu" or key.shape[1] != query.shape[1]:
        return False
    if any(kwargs.get(name) is not None for name in ("softcap", "position_bias")):
        return False
    if query.dtype not in (torch.float32, torch.bfloat16):
        return False
    return dropout > 0 or (query.dtype == torch.bfloat16 and torch.is_grad_enabled() and query.requires_grad)


def cpu_dropout_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                                  scaling: float | None = None, **kwargs):
    """transformers attention function: kdapp's attention for CPU training (float32 with dropout, bfloat16), its
    sdpa otherwise."""
    if not _kdapp_path(query, key, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = attention(query, key, value, attention_mask, dropout, scale)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTN_IMPLEMENTATION, cpu_dropout_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def use_fast_dropout(model: torch.nn.Module) -> int:
    """Switch a model's dropout to this module's CPU path, in place; returns how many dropout layers changed.

    Every nn.Dropout becomes a FastDropout (same p), and models on transformers' attention interface whose attention
    is sdpa get kdapp's attention for CPU training. Undo with `restore_dropout` before saving.
    """
    changed = 0
    for module in model.modules():
        if type(module) is torch.nn.Dropout:
            module.__class__ = FastDropout
            changed += 1
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) == "sdpa" and model._can_set_attn_implementation():
        model.set_attn_implementation(ATTN_IMPLEMENTATION)  # only models on the attention interface
    return changed


def restore_dropout(model: torch.nn.Module) -> None:
    """Undo `use_fast_dropout`: plain nn.Dropout and sdpa attention, as a saved checkpoint should say."""
    for module in model.modules():
        if type(module) is FastDropout:
            module.__class__ = torch.nn.Dropout
    if getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTN_IMPLEMENTATION:
        model.set_attn_implementation("sdpa")
