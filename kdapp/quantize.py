"""CPU int8: torch's dynamic quantization with per-channel weights, and the feed-forward output layers smoothed
(SmoothQuant, Xiao et al. 2023) when the checkpoint carries the activation maxima of a few of its training reviews.

Dynamic int8 quantizes a layer's input with one scale per batch. The input of a BERT feed-forward output layer (the
GELU of the intermediate layer) has a few channels many times larger than the rest (docs/speed.md, for the MiniLM
teacher), so that one scale is coarse for every other channel. Smoothing divides each input channel j by
s_j = max|x_j|^a / max|W_j|^(1-a) (a = SMOOTH_ALPHA) and multiplies the weight's column j by s_j: the same function
in exact arithmetic, with the outliers moved into the weight, where per-channel quantization (one scale per output
row) absorbs them. It costs one multiply of that layer's input (docs/speed.md).

    maxima = activation_maxima(model, ids, pad_id)        # a few hundred training reviews
    save_calibration(folder, maxima)                      # int8_calibration.safetensors next to the weights
    prepare_model(load_model(folder), "int8")             # load_model attaches them; prepare_model smooths
"""
from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CALIBRATION_FILE = "int8_calibration.safetensors"
CALIBRATION_ROWS = 256   # training reviews a run calibrates on when it saves (seconds, even for the teacher)
# migration strength: 1.0 (x / max|x| per channel) kept the MiniLM teacher's int8 logits closest to fp32 on held-out
# training reviews, of 0.5-1.0 (benchmarks/int8_variants.py --alphas); 0.5, SmoothQuant's default, flipped 10x more
SMOOTH_ALPHA = 1.0


class SmoothedLinear(torch.nn.Module):
    """linear(x / s) with the linear's weight columns already multiplied by s (quantize_dynamic quantizes .linear).

    Under torch.inference_mode x is divided in place: a feed-forward output layer's input is the GELU's fresh output,
    read by nothing else, and writing it back skips a (tokens x intermediate) allocation."""

    def __init__(self, linear: torch.nn.Linear, scale: torch.Tensor):
        super().__init__()
        with torch.no_grad():
            linear.weight.mul_(scale.to(linear.weight.dtype))
        self.linear = linear
        self.register_buffer("inv_scale", (1.0 / scale).to(linear.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mul_(self.inv_scale) if torch.is_inference_mode_enabled() else x * self.inv_scale)


def ffn_output_layers(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The feed-forward output layers: the Linears that read the intermediate width (BERT intermediate_size,
    DistilBERT hidden_dim); none for a model without one."""
    width = getattr(model.config, "intermediate_size", None) or getattr(model.config, "hidden_dim", None)
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features == width}


@torch.inference_mode()
def activation_maxima(model: torch.nn.Module, ids: list[list[int]], pad_id: int,
                      batch_size: int = 32) -> dict[str, torch.Tensor]:
    """{layer name: max |input| per input channel} of the feed-forward output layers over `ids` (full forward, in
    eval mode; the model's mode is restored)."""
    from .inference import logits_from_ids

    if not ids:
        raise ValueError("int8 calibration needs at least one review")
    maxima: dict[str, torch.Tensor] = {}

    def hook(name):
        def record(_module, args):
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).float().cpu()
            maxima[name] = torch.maximum(maxima[name], x) if name in maxima else x
        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in ffn_output_layers(model).items()]
    was_training = model.training
    try:
        logits_from_ids(model.eval(), ids, pad_id, batch_size, cls_only=False)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return maxima


def save_calibration(folder: Path | str, maxima: dict[str, torch.Tensor]) -> Path:
    """Write the maxima next to a model's weights in one step (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    path = Path(folder) / CALIBRATION_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in maxima.items()}, str(tmp))  # maxima only: the strength applies at load
    os.replace(tmp, path)
    return path


def load_calibration(folder: Path | str) -> dict[str, torch.Tensor] | None:
    """The maxima saved in `folder`, or None when it has none or they cannot be read (int8 then goes unsmoothed)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        log.warning("ignoring %s (%s): int8 runs without smoothing; rewrite it with python -m kdapp "
                    "int8-calibrate --model %s", path, e, folder)
        return None


def smooth(model: torch.nn.Module, maxima: dict[str, torch.Tensor], alpha: float = SMOOTH_ALPHA) -> int:
    """Wrap each feed-forward output layer that has maxima in a SmoothedLinear, in place; returns how many."""
    done = 0
    for name, linear in ffn_output_layers(model).items():
        x_max = maxima.get(name)
        if x_max is None or x_max.shape != (linear.in_features,):
            continue
        w_max = linear.weight.detach().abs().amax(0).float().clamp(min=1e-5)
        scale = (x_max.float().clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, SmoothedLinear(linear, scale))
        done += 1
    return done


def quantize_int8(model: torch.nn.Module, maxima: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """Dynamic int8 of every nn.Linear with per-channel weights (in place: pass a copy), the feed-forward output
    layers smoothed first when `maxima` are given. model.kdapp_int8 says which."""
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao (STACK_NOTES 6)
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        smoothed = smooth(model, maxima) if maxima else 0
        model = quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    model.kdapp_int8 = f"per-channel, {smoothed} feed-forward outputs smoothed" if smoothed else "per-channel"
    return model


def calibration_tag(maxima: dict[str, torch.Tensor] | None) -> str:
    """A short hash of the maxima (empty without them): part of an int8 teacher's logit-cache key."""
    if not maxima:
        return ""
    h = hashlib.sha256()
    for name in sorted(maxima):
        h.update(name.encode())
        h.update(maxima[name].float().numpy().tobytes())
    return f"-smooth-{h.hexdigest()[:12]}"


def calibrate_checkpoint(model_dir: str, data: str, rows: int = CALIBRATION_ROWS,
                         max_length: int | None = None) -> dict:
    """`python -m kdapp int8-calibrate`: (re)write a checkpoint folder's int8 calibration from the first `rows`
    reviews of `data`'s seed-42 training split (checkpoints saved by kdapp's training carry one already)."""
    from .checkpoints import load_run_info
    from .data import load_splits
    from .encoding import encode
    from .models import load_pair

    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise ValueError(f"{model_dir!r} is not a local model folder: int8 calibration is written next to its weights")
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    model, tokenizer = load_pair(str(folder))
    run = load_run_info(folder).run_config  # {} for a folder kdapp did not train
    max_length = min(max_length or run.get("max_length") or 512,
                     getattr(model.config, "max_position_embeddings", None) or 512)
    texts = load_splits(data, max_train_samples=rows)["train"]["text"]
    ids = encode(tokenizer, texts, max_length, run.get("truncation", "head"), run.get("head_tokens"))
    maxima = activation_maxima(model, ids, tokenizer.pad_token_id or 0)
    if not maxima:
        raise ValueError(f"{model_dir}: no feed-forward output layer found to calibrate")
    path = save_calibration(folder, maxima)
    return {"path": str(path), "rows": len(ids), "max_length": max_length, "layers": len(maxima)}
