"""The fast inference path used by evaluate, predict, the logit cache and the app.

Reviews are tokenized once, sorted by length, batched with dynamic padding and run under torch.inference_mode;
a BERT / DistilBERT classifier computes its last layer at [CLS] only (kdapp/cls_only.py); results come back in
input order. Optional precisions: bf16 (autocast) and int8 (dynamic quantization) on CPU,
fp16/bf16 on a GPU, bitsandbytes 8-/4-bit on CUDA.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import queue
import threading

import numpy as np
import torch

from .cls_only import cls_only as last_layer_cls_only
from .encoding import encode, review_windows
from .memory import keep_freed_memory
from .quantize import quantize_int8

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
# On CPU a batch holds at most this many tokens, padding included (with batch_size as the row limit): the
# activations and attention scores of a small batch stay in cache, and the 2-core dev machine classified reviews
# fastest that way (docs/speed.md, benchmarks/speed.py --parts batch_tokens). GPUs take the whole batch_size.
CPU_BATCH_TOKENS = 2048
# On CPU a long job's batches run side by side, one per intra-op thread, each batch single-threaded: the dev
# machine's 2 cores labelled 10-13 % more reviews per second that way than with one batch at a time on both (no
# synchronisation inside each op; benchmarks/side_by_side.py). Only with at least this many batches per thread, so
# short jobs (a typed review, a latency measurement) run exactly as before.
MIN_BATCHES_PER_WORKER = 4


def native_bf16() -> bool:
    """Does oneDNN run bf16 matmuls natively here? Without it bf16 on CPU is several times slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def prepare_model(model: torch.nn.Module, precision: str = "fp32", device: str | None = None) -> torch.nn.Module:
    """A copy of `model` ready for inference at `precision` on `device` (the original is left untouched).

    CPU int8 is torch's dynamic quantization of every nn.Linear (weights int8 per output channel, activations
    quantized per batch), the feed-forward output layers smoothed when the model carries int8 calibration
    (kdapp/quantize.py: load_model attaches a checkpoint's); CUDA int8/int4 use bitsandbytes when it is installed.
    """
    device = device or default_device()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision in ("int8", "int4") and device.startswith("cuda"):
        return _bnb_quantize(model, precision, device)
    if precision == "int4":
        raise ValueError("int4 needs a CUDA GPU with bitsandbytes; on CPU use int8 or bf16")
    if precision == "fp16" and device == "cpu":
        raise ValueError("fp16 is slow or unsupported on CPU; use bf16 or int8")
    model = copy.deepcopy(model).eval().to(device)
    if precision == "int8":
        model = quantize_int8(model, getattr(model, "kdapp_int8_maxima", None))
    elif precision in ("bf16", "fp16"):
        model = model.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    model.kdapp_precision = precision
    return model


def _bnb_quantize(model, precision: str, device: str):
    try:
        from transformers import BitsAndBytesConfig  # noqa: F401
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ValueError("int8/int4 on a GPU needs bitsandbytes: pip install bitsandbytes") from e
    import tempfile

    from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

    with tempfile.TemporaryDirectory() as tmp:  # bitsandbytes quantizes at load time
        model.save_pretrained(tmp)
        qconfig = (BitsAndBytesConfig(load_in_8bit=True) if precision == "int8" else
                   BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_quant_type="nf4"))
        # the layers bitsandbytes leaves whole (embeddings, LayerNorm, attention, the head): fp16 under int4, its
        # compute dtype (half the size, no casts); float32 under int8, whose fp16 form lost a point of accuracy on
        # an H200 and flipped clear cases of the tests' tiny model (benchmarks/quantized.py, README: Speed)
        rest = torch.float16 if precision == "int4" else torch.float32
        quantized = AutoModelForSequenceClassification.from_pretrained(tmp, quantization_config=qconfig,
                                                                       device_map={"": device}, dtype=rest)
    quantized.eval().kdapp_precision = precision
    return quantized


def model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a fully dynamic-quantized model may expose no parameters
        return torch.device("cpu")


def pad_batch(batch_ids: list[list[int]], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad a list of id lists to the longest one: (B, L) input_ids and attention_mask."""
    width = max(len(x) for x in batch_ids)
    ids = torch.full((len(batch_ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, x in enumerate(batch_ids):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def length_batches(lengths: list[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early): at most batch_size
    rows, and with max_tokens at most that many tokens once padded to the batch's longest row (one row at least)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) >= batch_size
                        or max_tokens and (len(current) + 1) * lengths[current[0]] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


def batch_tokens(device: torch.device | str, max_tokens: int | str | None = "auto") -> int | None:
    """The token limit per batch: "auto" is CPU_BATCH_TOKENS on CPU and none on a GPU."""
    if max_tokens != "auto":
        return max_tokens
    return CPU_BATCH_TOKENS if torch.device(device).type == "cpu" else None


def own_precision(model):
    """The autocast context `model` runs its forward in, whatever autocast the caller is under: bf16 autocast for a
    CPU model prepare_model made bf16, none otherwise (its weights' dtype decides). A teacher called inside the
    student's mixed-precision training step so computes what it computes outside it, in the logit cache."""
    device = model_device(model)
    if device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    if getattr(model, "kdapp_precision", "fp32") == "bf16" and device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def attention_backends(device: torch.device | str):
    """On CUDA, scaled-dot-product attention without its cuDNN backend (flash or memory-efficient instead); on CPU,
    torch's choice. cuDNN builds a plan for every new input shape, and length-sorted batches with dynamic padding
    bring many: on an H200 (torch 2.11) a first pass over 2,000 reviews in fp16 took 8.4 s with it and 0.55 s
    without, a repeated one 0.17 against 0.22 s. torch's backend flags are process-wide: while a job runs, other
    threads' attention leaves cuDNN out too (the same results, another kernel)."""
    if torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def worker_count(device: torch.device | str, n_batches: int, workers: int | str = "auto") -> int:
    """Threads to run a job's batches on: "auto" is one per intra-op thread on CPU when each gets at least
    MIN_BATCHES_PER_WORKER batches, 1 otherwise (and on a GPU)."""
    if workers != "auto":
        return max(1, int(workers))
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or threads < 2 or n_batches < MIN_BATCHES_PER_WORKER * threads:
        return 1
    return threads


def row_workers(device: torch.device | str, n_rows: int, workers: int | str = "auto") -> int:
    """Threads to split one batch's rows over: "auto" is one per intra-op thread on CPU when each gets two rows
    at least, 1 otherwise (and on a GPU)."""
    if workers != "auto":
        return max(1, min(int(workers), n_rows))
    threads = torch.get_num_threads()
    return threads if torch.device(device).type == "cpu" and threads >= 2 and n_rows >= 2 * threads else 1


def _side_by_side(run, batches: list, n_workers: int, progress=None, grad_mode=torch.inference_mode) -> None:
    """run(batch) for every batch on n_workers threads, each single-threaded inside (torch.set_num_threads(1) is
    per thread for the OpenMP pool; the process-wide count is restored after), each under grad_mode() (grad mode
    is per thread). The first error is raised here, after the other threads have stopped; progress is reported
    from the calling thread."""
    threads_before = torch.get_num_threads()
    todo, lock, stop, done = iter(batches), threading.Lock(), threading.Event(), queue.Queue()

    def work():
        torch.set_num_threads(1)
        try:
            with grad_mode():
                while not stop.is_set():
                    with lock:
                        batch = next(todo, None)
                    if batch is None:
                        return
                    run(batch)
                    done.put(None)
        except BaseException as e:  # noqa: BLE001  (handed to the calling thread, raised there)
            done.put(e)

    workers = [threading.Thread(target=work, name=f"kdapp-infer-{k}", daemon=True) for k in range(n_workers)]
    for worker in workers:
        worker.start()
    try:
        for n in range(len(batches)):
            failure = done.get()
            if failure is not None:
                raise failure
            if progress:
                progress(n + 1, len(batches))
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        torch.set_num_threads(threads_before)


@torch.inference_mode()
def logits_from_ids(model, ids: list[list[int]], pad_id: int, batch_size: int = 64, progress=None,
                    cls_only: bool = True, max_tokens: int | str | None = "auto",
                    workers: int | str = "auto", hidden_layer: int = 0, states: list | None = None) -> np.ndarray:
    """(N, num_labels) float32 logits for pre-tokenized rows, in input order.

    cls_only: a BERT / DistilBERT classifier computes its last layer at [CLS] only (kdapp/cls_only.py: the same
    logits, less work); False runs every position, as the model's own forward does.
    max_tokens: tokens per batch at most, padding included ("auto": CPU_BATCH_TOKENS on CPU; None: batch_size rows
    whatever their length).
    workers: batches run side by side on this many threads, each single-threaded ("auto": see worker_count; 1: one
    batch at a time on every intra-op thread). Each row's logits are the same either way up to float rounding.
    states: a list of N entries; with hidden_layer = k > 0, entry i becomes row i's hidden state after the first k
    encoder layers, (its length, hidden) on the CPU (kdapp/shared_prefix.py)."""
    device = model_device(model)
    out = np.zeros((len(ids), model.config.num_labels), dtype=np.float32)
    batches = length_batches([len(x) for x in ids], batch_size, batch_tokens(device, max_tokens))
    keep = states is not None and hidden_layer > 0
    extra = {"output_hidden_states": True} if keep else {}

    def run(batch: list[int]) -> None:
        with own_precision(model):
            result = model(**pad_batch([ids[i] for i in batch], pad_id, device), **extra)
        out[batch] = result.logits.float().cpu().numpy()
        if keep:
            hidden = result.hidden_states[hidden_layer].float().cpu()
            for j, i in enumerate(batch):
                states[i] = hidden[j, :len(ids[i])].clone()

    # a job of several batches frees and re-allocates the same large tensors: keep the freed memory (kdapp/memory.py)
    held = keep_freed_memory() if len(batches) > 1 else contextlib.nullcontext()
    with held, last_layer_cls_only(model, cls_only), attention_backends(device):
        n_workers = worker_count(device, len(batches), workers)
        if n_workers > 1:
            _side_by_side(run, batches, n_workers, progress)
            return out
        for n, batch in enumerate(batches):
            run(batch)
            if progress:
                progress(n + 1, len(batches))
    return out


def teacher_forward(model, inputs: dict, workers: int | str = "auto", hidden_layer: int = 0):
    """A teacher's logits for one training batch, without gradients (torch.no_grad: the KD loss may keep them for
    its backward pass), in the teacher's own precision whatever autocast the caller is under (own_precision).

    On CPU with more than one intra-op thread the batch's rows run side by side in that many parts (row_workers),
    each single-threaded and cut to its own longest row, as logits_from_ids runs whole batches: the same logits
    up to float rounding, in the batch's row order. inputs: the model's keyword arguments, (rows, length, ...)
    tensors right-padded, with an attention_mask (without one the batch runs whole).
    hidden_layer = k > 0: returns (logits, the hidden state after the first k encoder layers), the states at the
    batch's length (zeros past a part's longest row; kdapp/shared_prefix.py)."""
    keep = hidden_layer > 0
    extra = {"output_hidden_states": True} if keep else {}

    def call(part: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        with own_precision(model):
            result = model(**part, **extra)
        return result.logits, result.hidden_states[hidden_layer] if keep else None

    mask = inputs.get("attention_mask")
    n_workers = 1 if mask is None else row_workers(model_device(model), len(mask), workers)
    if n_workers == 1:
        with torch.no_grad():
            logits, states = call(inputs)
        return (logits, states) if keep else logits
    bounds = np.linspace(0, len(mask), n_workers + 1).astype(int)
    parts = [_rows(inputs, start, stop) for start, stop in zip(bounds[:-1], bounds[1:])]
    results = [None] * n_workers

    def run(k: int) -> None:
        results[k] = call(parts[k])

    _side_by_side(run, list(range(n_workers)), n_workers, grad_mode=torch.no_grad)
    logits = torch.cat([r[0] for r in results])
    if not keep:
        return logits
    width = mask.shape[1]
    return logits, torch.cat([torch.nn.functional.pad(r[1], (0, 0, 0, width - r[1].shape[1])) for r in results])


def _rows(inputs: dict, start: int, stop: int) -> dict:
    """Rows start:stop of a right-padded batch, cut to their longest row."""
    width = int(inputs["attention_mask"][start:stop].sum(-1).max())
    length = inputs["attention_mask"].shape[1]
    return {name: (t[start:stop, :width] if t.dim() >= 2 and t.shape[1] == length else t[start:stop])
            if isinstance(t, torch.Tensor) else t for name, t in inputs.items()}


def reading_length(model, max_length: int) -> int:
    """max_length, capped at the positions the model has."""
    return min(max_length, getattr(model.config, "max_position_embeddings", max_length))


def predict_logits(model, tokenizer, texts: list[str], max_length: int = 512, batch_size: int = 64,
                   truncation: str = "head", head_tokens: int | None = None, progress=None,
                   max_tokens: int | str | None = "auto", windows: bool = False) -> np.ndarray:
    """Logits for raw review texts through the fast path (in input order).

    windows: read each review whole, as max_length windows (kdapp.encoding.review_windows), and return the mean of
    its windows' logits (truncation and head_tokens are then unused); a review that fits is read once, as without."""
    max_length = reading_length(model, max_length)
    if not windows:
        ids = encode(tokenizer, list(texts), max_length, truncation, head_tokens)
        return logits_from_ids(model, ids, tokenizer.pad_token_id or 0, batch_size, progress, max_tokens=max_tokens)
    ids, owner = review_windows(tokenizer, list(texts), max_length)
    logits = logits_from_ids(model, ids, tokenizer.pad_token_id or 0, batch_size, progress, max_tokens=max_tokens)
    total = np.zeros((len(texts), logits.shape[1]), dtype=np.float64)
    np.add.at(total, owner, logits)
    return (total / np.bincount(owner, minlength=len(texts))[:, None]).astype(np.float32)


def predict(model, tokenizer, texts: list[str], **kwargs) -> list[dict]:
    """[{'label': 'POSITIVE', 'score': 0.97, 'probs': [p_neg, p_pos]}] per text."""
    from .metrics import softmax

    probs = softmax(predict_logits(model, tokenizer, texts, **kwargs))
    id2label = getattr(model.config, "id2label", None) or {}
    return [{"label": id2label.get(int(p.argmax()), str(int(p.argmax()))), "score": float(p.max()),
             "probs": [float(x) for x in p]} for p in probs]
