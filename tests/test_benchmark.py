"""kdapp.benchmark and `python -m kdapp bench`: every JSON field, the seed's table and its Delta column, arch models,
and what else used the CPUs while timing."""
import contextlib
import io
import json
import subprocess
import sys
import time

import psutil
import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig

from conftest import VOCAB, tiny_bert
from kdapp import benchmark
from kdapp.__main__ import main
from kdapp.benchmark import (ARCHS, CpuUse, build_arch, cpu_use, forward_flops, load_bench_model, markdown_table,
                             others_share, precision_table, run_benchmark, state_dict_size_mb)
from kdapp.models import ModelError, count_parameters

ROW_FIELDS = {"model", "label", "precision", "device", "max_length", "batch_size", "seq_len", "n_rows", "n_batches",
              "mean_tokens", "repeats", "warmup", "latency_ms_median", "latency_ms_p90", "latency_ms_mean",
              "throughput_samples_per_s", "tokens_per_s", "achieved_gflop_per_s", "timed_s", "peak_rss_mb",
              "peak_gpu_mb", "others_cpu_share", "steal_share", "params", "non_embedding_params", "size_mb",
              "size_source", "threads", "torch"}
ENV_FIELDS = {"device", "device_name", "cpu_model", "cpu_count", "cpu_capability", "cpu_flags", "native_bf16",
              "threads", "interop_threads", "omp_wait_policy", "gomp_spincount", "torch", "transformers", "python",
              "platform", "load_avg_1m", "rss_idle_mb", "started_at", "seconds"}
TINY = dict(max_length=16, n_texts=6, repeats=1)


@pytest.fixture
def tiny_arch(monkeypatch):
    """arch:tiny-bert: the arch code path (config -> random weights) at test size."""
    monkeypatch.setitem(ARCHS, "tiny-bert", lambda: BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64))
    return "arch:tiny-bert"


def test_json_has_every_field(teacher_dir):
    calls = []
    result = run_benchmark([str(teacher_dir)], batch_sizes=(1, 4), progress=lambda f, m: calls.append((f, m)), **TINY)
    json.dumps(result)  # plain types only
    assert ENV_FIELDS <= set(result["env"]) and result["env"]["device"] == "cpu"
    assert result["env"]["threads"] == torch.get_num_threads()
    rows = result["rows"]
    assert [r["batch_size"] for r in rows] == [1, 4]
    for r in rows:
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["seq_len"] == 16 and r["n_rows"] == 6 and r["mean_tokens"] == 16
        assert 0 < r["latency_ms_median"] <= r["latency_ms_p90"] and r["throughput_samples_per_s"] > 0
        assert r["params"] == count_parameters(tiny_bert(layers=4)) and r["size_source"] == "weight files"
        assert r["peak_rss_mb"] > 0 and r["peak_gpu_mb"] is None and r["achieved_gflop_per_s"] > 0
        for share in (r["others_cpu_share"], r["steal_share"]):  # None: too short a span to tell
            assert share is None or 0.0 <= share <= 1.0
    assert rows[0]["n_batches"] == 6 and rows[1]["n_batches"] == 2  # 6 rows in batches of 4: 4 + 2
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 <= fractions[0] < 1.0


def test_real_reviews_are_tokenized_and_truncated(teacher_dir, reviews_parquet):
    result = run_benchmark([str(teacher_dir)], batch_sizes=(4,), data=str(reviews_parquet), **TINY)
    row = result["rows"][0]
    assert row["seq_len"] == "reviews" and 3 < row["mean_tokens"] <= 16
    assert result["config"]["data"] == str(reviews_parquet) and "reviews from" in markdown_table(result)


def test_precisions_and_arch_models(tiny_arch, teacher_dir):
    result = run_benchmark([tiny_arch, str(teacher_dir)], batch_sizes=(2,), precisions=("fp32", "int8"), **TINY)
    rows = {(r["model"], r["precision"]): r for r in result["rows"]}
    assert set(rows) == {(m, p) for m in (tiny_arch, str(teacher_dir)) for p in ("fp32", "int8")}
    assert rows[(tiny_arch, "fp32")]["size_source"] == "serialized state dict"
    assert rows[(str(teacher_dir), "int8")]["size_source"] == "serialized state dict"
    assert rows[(str(teacher_dir), "int8")]["params"] == rows[(str(teacher_dir), "fp32")]["params"]  # before quantizing
    table = markdown_table(result)
    assert "arch:tiny-bert (int8)" in table and f"Delta {teacher_dir.name} (int8)" in table  # one Delta per model


def test_markdown_table_has_the_seeds_rows_and_delta_column():
    def row(model, batch, latency, throughput, params, size):
        return {"model": model, "precision": "fp32", "batch_size": batch, "latency_ms_median": latency,
                "latency_ms_p90": latency * 1.1, "throughput_samples_per_s": throughput, "params": params,
                "size_mb": size, "peak_rss_mb": 500.0}

    result = {"rows": [row("arch:bert-base-uncased", 1, 20.0, 50.0, 110_000_000, 440.0),
                       row("arch:bert-base-uncased", 100, 1000.0, 100.0, 110_000_000, 440.0),
                       row("arch:distilbert-base-uncased", 1, 10.0, 100.0, 66_000_000, 264.0),
                       row("arch:distilbert-base-uncased", 100, 500.0, 200.0, 66_000_000, 264.0)],
              "env": {"device": "cpu", "device_name": "x", "threads": 2, "omp_wait_policy": "PASSIVE", "torch": "2"},
              "config": {"max_length": 128, "n_rows": 100, "repeats": 3, "warmup": 1}}
    lines = markdown_table(result).splitlines()
    assert lines[0] == "| Metric | arch:bert-base-uncased | arch:distilbert-base-uncased | Delta |"
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:7]}
    assert cells["Latency, batch 1 (ms, median / p90)"] == ["20.0 / 22.0", "10.0 / 11.0", "2.00x faster"]
    assert cells["Latency, batch 100 (ms, median / p90)"][2] == "2.00x faster"
    assert cells["Throughput, batch 100 (samples/s)"] == ["100.0", "200.0", "2.00x faster"]
    assert cells["Parameters"] == ["110.0 M", "66.0 M", "-40 % params"]
    assert cells["Disk size (MB)"] == ["440", "264", "-40 % size"]
    flipped = markdown_table(result, baseline="arch:distilbert-base-uncased").splitlines()
    assert flipped[0].split("|")[2].strip() == "arch:distilbert-base-uncased" and "2.00x slower" in flipped[2]
    assert "OMP_WAIT_POLICY=PASSIVE, torch" in lines[-1]  # no spin count set: none named
    result["env"]["gomp_spincount"] = "300000"  # it overrides the policy's spin (benchmarks/omp_wait.py)
    assert "OMP_WAIT_POLICY=PASSIVE, GOMP_SPINCOUNT=300000, torch" in markdown_table(result).splitlines()[-1]
    assert not any(line.startswith("| Peak GPU memory") for line in lines)  # CPU rows: no GPU row
    for r, gpu in zip(result["rows"], (60.0, 800.0, 40.0, 400.0)):
        r["peak_gpu_mb"] = gpu
    gpu_line = next(line for line in markdown_table(result).splitlines() if line.startswith("| Peak GPU memory"))
    assert [c.strip() for c in gpu_line.split("|")[1:-1]] == ["Peak GPU memory, batch 100 (MB)", "800", "400",
                                                              "-50 % memory"]


def test_others_share_is_the_cpus_busy_time_less_this_process():
    before = CpuUse(busy=10.0, steal=1.0, total=100.0, own=5.0)
    after = CpuUse(busy=70.0, steal=3.0, total=200.0, own=40.0)  # 60 s busy, 35 of them this process's
    assert others_share(before, after) == {"others_cpu_share": 0.25, "steal_share": 0.02}
    only_us = CpuUse(busy=40.0, steal=1.0, total=200.0, own=36.0)  # tick rounding: own > busy counts as nobody else
    assert others_share(before, only_us) == {"others_cpu_share": 0.0, "steal_share": 0.0}
    short = CpuUse(busy=10.2, steal=1.0, total=100.4, own=5.0)  # 0.4 CPU-s: under the kernel's tick resolution
    assert others_share(before, short) == {"others_cpu_share": None, "steal_share": None}
    assert others_share(None, after) == {"others_cpu_share": None, "steal_share": None}


@pytest.mark.skipif(not hasattr(psutil.Process(), "cpu_affinity"), reason="needs CPU affinity (Linux, Windows)")
def test_cpu_use_sees_another_process_and_not_this_one():
    """On one CPU shared with a busy-looping process the share is about 1; this process looping there, about 0."""
    me = psutil.Process()
    allowed = me.cpu_affinity()
    cpu = allowed[0]
    me.cpu_affinity([cpu])  # cpu_use() counts the CPUs this process may run on: now just this one
    try:
        before, end = cpu_use(), time.perf_counter() + 1.0
        while time.perf_counter() < end:
            pass
        assert others_share(before, cpu_use())["others_cpu_share"] < 0.3
        child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            psutil.Process(child.pid).cpu_affinity([cpu])
            time.sleep(0.3)
            before = cpu_use()
            time.sleep(1.0)
            assert others_share(before, cpu_use())["others_cpu_share"] > 0.6
        finally:
            child.kill()
            child.wait()
    finally:
        me.cpu_affinity(allowed)


def test_markdown_table_says_when_other_processes_took_the_cpus():
    def row(model, share, steal=0.0):
        return {"model": model, "precision": "fp32", "batch_size": 1, "latency_ms_median": 10.0,
                "latency_ms_p90": 11.0, "throughput_samples_per_s": 100.0, "params": 1, "size_mb": 1.0,
                "peak_rss_mb": 1.0, "others_cpu_share": share, "steal_share": steal}

    result = {"rows": [row("a", 0.02), row("b", 0.04)],
              "env": {"device": "cpu", "device_name": "x", "threads": 2, "omp_wait_policy": "PASSIVE", "torch": "2"},
              "config": {"max_length": 16, "n_rows": 4, "repeats": 1, "warmup": 1}}
    lines = markdown_table(result).splitlines()
    assert lines[0].startswith("| Metric") and "Busy machine" not in "".join(lines)  # idle: the table comes first
    assert lines[-1].endswith("Other processes used up to 4 % of the CPUs while timing. Delta: each model vs a.")
    result["rows"][1] |= {"others_cpu_share": 0.48, "steal_share": 0.03}
    lines = markdown_table(result).splitlines()
    assert lines[0].startswith("**Busy machine**: Other processes used up to 48 % of the CPUs while timing, the "
                               "hypervisor up to 3 %.") and lines[2].startswith("| Metric")
    result["rows"][1] |= {"others_cpu_share": 0.02, "steal_share": 0.12}  # a VM whose host was busy
    assert markdown_table(result).startswith("**Busy machine**")
    for r in result["rows"]:
        r["others_cpu_share"] = r["steal_share"] = None  # no reading (too short, or no per-CPU times here)
    assert "Other processes" not in markdown_table(result)


def test_arch_configs_equal_the_hubs():
    """Parameter counts of the hub's bert-base-uncased / distilbert-base-uncased sequence classifiers (2 labels)."""
    expected = {"bert-base-uncased": 109_483_778, "distilbert-base-uncased": 66_955_010}
    for name, n in expected.items():
        config = ARCHS[name]()
        config.num_labels = 2
        with torch.device("meta"):  # shapes only: no memory, no init
            model = AutoModelForSequenceClassification.from_config(config)
        assert count_parameters(model) == n and config.vocab_size == 30522 and config.max_position_embeddings == 512


def test_build_arch_is_random_but_reproducible(tiny_arch):
    a, b = build_arch(tiny_arch), build_arch("tiny-bert")
    assert a.config.num_labels == 2 and a.config.id2label[1] == "POSITIVE"
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q) and torch.isfinite(p).all(), name
    with pytest.raises(ModelError, match="arch:bert-base-uncased"):
        build_arch("arch:gpt-9")


def test_arch_on_reviews_without_minilm_says_what_to_do(tiny_arch, reviews_parquet, monkeypatch):
    monkeypatch.setattr(benchmark, "minilm_path", lambda: None)
    with pytest.raises(ModelError, match="leave out --data"):
        run_benchmark([tiny_arch], batch_sizes=(2,), data=str(reviews_parquet), **TINY)


@pytest.mark.parametrize("kwargs, message", [
    (dict(models=[]), "no models"),
    (dict(batch_sizes=(0,)), "positive integers"),
    (dict(precisions=("fp16",)), "not available on CPU"),
    (dict(precisions=("int3",)), "precision must be one of"),
    (dict(device="tpu"), "cpu or cuda"),
])
def test_bad_arguments_fail_before_any_work(kwargs, message, teacher_dir):
    args = dict(models=[str(teacher_dir)], batch_sizes=(1,)) | kwargs
    with pytest.raises(ValueError, match=message):
        run_benchmark(**args, **TINY)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(teacher_dir):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        run_benchmark([str(teacher_dir)], batch_sizes=(1,), device="cuda", **TINY)


def test_quantized_size_is_measured(teacher_dir):
    fp32, int8 = (load_bench_model(str(teacher_dir), p) for p in ("fp32", "int8"))
    assert int8.size_mb < state_dict_size_mb(fp32.model)
    assert abs(state_dict_size_mb(fp32.model) - fp32.size_mb) < 0.05  # torch.save ~ the safetensors file


def test_forward_flops():
    # 2 * N per token, plus 4 * layers * hidden * L^2 per sequence
    assert forward_flops(1000, layers=2, hidden=8, lengths=[3, 5]) == 2 * 1000 * 8 + 4 * 2 * 8 * (9 + 25)
    # the last layer at [CLS] only: the first layer as before; the last one's keys and values (2 * hidden^2 weights)
    # for every token, its other 500 - 128 weights and its attention for one query per sequence
    last = 2 * 128 * 8 + 2 * (500 - 128) * 2 + 4 * 8 * (3 + 5)
    assert forward_flops(1000, 2, 8, [3, 5], cls_only=True) == 2 * 500 * 8 + 4 * 8 * (9 + 25) + last


def test_precision_table():
    base = {"model": "m", "data": "d", "n": 10, "precision": "fp32", "accuracy": 0.9, "f1_weighted": 0.9,
            "ece": 0.05, "size_mb": 100.0, "samples_per_second": 10.0}
    table = precision_table([base, base | {"precision": "int8", "accuracy": 0.895, "size_mb": 60.0,
                                           "samples_per_second": 20.0}])
    int8 = next(line for line in table.splitlines() if line.startswith("| int8"))
    assert "-0.50" in int8 and "-40 %" in int8 and "2.00x faster" in int8


def test_bench_cli_writes_the_json(tiny_arch, teacher_dir, tmp_path):
    out_file = tmp_path / "bench" / "result.json"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["bench", "--models", str(teacher_dir), tiny_arch, "--batch_sizes", "1", "4", "--max_length",
                     "16", "--n_texts", "4", "--repeats", "1", "--device", "cpu", "--json", str(out_file)])
    assert code == 0, err.getvalue()
    assert "| Delta |" in out.getvalue() and f"wrote {out_file}" in out.getvalue()
    result = json.loads(out_file.read_text())
    assert len(result["rows"]) == 4 and all(ROW_FIELDS <= set(r) for r in result["rows"])
    assert result["config"]["batch_sizes"] == [1, 4] and result["env"]["omp_wait_policy"] == "PASSIVE"


def test_bench_cli_bad_precision_exits_2(teacher_dir):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["bench", "--models", str(teacher_dir), "--precision", "fp16", "--device", "cpu"])
    assert code == 2 and "not available on CPU" in err.getvalue()
