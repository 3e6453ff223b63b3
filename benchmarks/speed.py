"""Speed side by side: kdapp's KD training and inference paths vs what a user of the seed would run, on IMDb reviews.

Usage: python benchmarks/speed.py --quick (smoke run) | python benchmarks/speed.py --out benchmarks/results/speed_cpu
       python benchmarks/speed.py --report_only --out benchmarks/results/speed_cpu   (re-tabulate the saved JSON)
"""
# Measured, each with its ratio and the target (all-MiniLM-L6-v2 teacher, a 3-layer student made from it,
# reviews of ../shared/data/imdb/train.parquet in the seed's split):
# - KD training samples/s, 1 epoch: kdapp's distill_student (length-grouped batches, dynamic padding, OMP PASSIVE
#   unless GOMP_SPINCOUNT is set, kdapp's CPU dropout, teacher and student computing their last layer at [CLS] only)
#   vs a seed-faithful Trainer subclass (every review padded to max_length, teacher on the fly, libgomp's default
#   threads), run in a subprocess because the OpenMP wait policy is fixed when torch loads;
# - 2 epochs with the teacher-logit cache vs without (wall time of distill_student, cache pass included; with
#   --cache_rounds N each pair N times, its order reversed each round, the ratio from the summed wall times),
#   with each arm's time per epoch split into the teacher on the fly, the cache pass, the student and the fixed rest,
#   and the student's epoch at which the cache would pay the target;
# - inference over the validation reviews: kdapp fp32 / bf16 / int8 vs transformers.pipeline(batch_size=100), with
#   accuracy; student vs teacher at batch 100; arch:bert-base vs arch:distilbert-base at batch 100;
# - where the teacher's fp32 and int8 inference time goes (--parts profile: torch.profiler, per op group);
# - achieved model FLOP/s (2 * non-embedding params * real tokens + attention; training 3x; the FLOPs each path
#   executes, so fewer where the last layer runs at [CLS] only) as a fraction of this machine's measured fp32 matmul
#   FLOP/s in the same thread setting (bf16 paths: of its bf16 matmul FLOP/s, where bf16 is native).
from __future__ import annotations

import os
import sys

BASELINE_WORKER = "--baseline_worker" in sys.argv
if BASELINE_WORKER:
    os.environ.pop("OMP_WAIT_POLICY", None)  # the seed's setting: libgomp's default (spin, then sleep)
else:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # kdapp's setting; read by libgomp when torch loads, so set it first
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: no hub probes or retries

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

OMP_AT_TORCH_IMPORT = os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default)")
# GOMP_SPINCOUNT, when set, is how long libgomp's idle threads spin before they sleep, whatever the policy says: with
# GOMP_SPINCOUNT=300000 (libgomp's own default spin) kdapp's runs spin too (benchmarks/omp_wait.py: what each costs)
SPIN_AT_TORCH_IMPORT = os.environ.get("GOMP_SPINCOUNT")
KDAPP_THREADS = OMP_AT_TORCH_IMPORT + (f", GOMP_SPINCOUNT={SPIN_AT_TORCH_IMPORT}" if SPIN_AT_TORCH_IMPORT else "")
import torch  # noqa: E402  (before kdapp in the worker: its PASSIVE default must not reach libgomp there)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "imdb" / "train.parquet"
DEFAULT_TEACHER = ROOT / "checkpoints" / "cpu-scale" / "teacher"
RECIPE = dict(per_device_train_batch_size=16, learning_rate=1e-4, alpha=0.5, temperature=2.0, seed=42)
# Some of kdapp's KD runs here switch off dropout on the attention probabilities (--attention_dropout 0): on CPU any
# p > 0 sends PyTorch's scaled_dot_product_attention to its unfused path with a random mask per (head, query, key).
# That changes the recipe, so the like-for-like ratio is kdapp_1ep_attn_dropout (the model's 0.1, as in the baseline),
# which runs kdapp's CPU dropout (kdapp/dropout.py: the same masks, drawn and applied faster); kdapp_1ep_torch_dropout
# is the same run with PyTorch's dropout, to show what that path buys. What attention dropout 0 costs in accuracy is
# measured by benchmarks/accuracy.py (kd-ad0, nokd-ad0, kd-transfer-masked-ad0).
KDAPP_TRAINING = dict(attention_dropout=0.0)
FIRST_LAYERS = {1: "first layer", 2: "first two layers"}  # --freeze_layers N, in words
# kdapp's KD runs: name -> (epochs, logit cache, RunConfig overrides, what it is)
KD_RUNS = {
    "kdapp_1ep": (1, False, {}, "attention dropout 0"),
    "kdapp_2ep_nocache": (2, False, {}, "attention dropout 0, teacher on the fly"),
    "kdapp_2ep_cache": (2, True, {}, "attention dropout 0, teacher logits cached"),
    "kdapp_1ep_attn_dropout": (1, False, dict(attention_dropout=None), "the model's own attention dropout, 0.1"),
    "kdapp_1ep_torch_dropout": (1, False, dict(attention_dropout=None, fast_dropout=False),
                                "the model's own attention dropout, PyTorch's dropout path"),
    "kdapp_1ep_int8_teacher": (1, False, dict(attention_dropout=None, teacher_precision="int8"),
                               "the model's own attention dropout, teacher in dynamic int8"),
    "kdapp_1ep_full_last_layer": (1, False, dict(attention_dropout=None, cls_only=False),
                                  "the model's own attention dropout, every position of the last layer computed"),
    # --mixed_precision bf16: the student under bf16 autocast, the teacher in bf16 (CPUs with AVX-512 BF16 or AMX)
    "kdapp_1ep_bf16": (1, False, dict(attention_dropout=None, mixed_precision="bf16"),
                       "the model's own attention dropout, bf16 mixed precision"),
    "kdapp_2ep_nocache_bf16": (2, False, dict(mixed_precision="bf16"),
                               "attention dropout 0, teacher on the fly, bf16 mixed precision"),
    "kdapp_2ep_cache_bf16": (2, True, dict(mixed_precision="bf16"),
                             "attention dropout 0, teacher logits cached, bf16 mixed precision"),
    # the student in bf16, the teacher kept in fp32 (--teacher_precision fp32): the exact fp32 soft targets, the
    # student's cheaper steps; the costlier teacher is where a cache pays most
    "kdapp_2ep_nocache_bf16_t32": (2, False, dict(mixed_precision="bf16", teacher_precision="fp32"),
                                   "attention dropout 0, teacher on the fly in fp32, student in bf16"),
    "kdapp_2ep_cache_bf16_t32": (2, True, dict(mixed_precision="bf16", teacher_precision="fp32"),
                                 "attention dropout 0, teacher logits cached in fp32, student in bf16"),
    # the same with the student's word embeddings frozen (--freeze_word_embeddings): no gradient, AdamW update or
    # clipping for its largest matrix, a cheaper student step; a recipe change (its accuracy: benchmarks/accuracy.py
    # kd-ad0-bf16-t32-frozen against kd-ad0-bf16-t32)
    "kdapp_2ep_nocache_bf16_t32_frozen": (2, False, dict(mixed_precision="bf16", teacher_precision="fp32",
                                                         freeze_word_embeddings=True),
                                          "attention dropout 0, teacher on the fly in fp32, student in bf16, its "
                                          "word embeddings frozen"),
    "kdapp_2ep_cache_bf16_t32_frozen": (2, True, dict(mixed_precision="bf16", teacher_precision="fp32",
                                                      freeze_word_embeddings=True),
                                        "attention dropout 0, teacher logits cached in fp32, student in bf16, its "
                                        "word embeddings frozen"),
    # and with no hidden dropout either (--hidden_dropout 0): no masks drawn or applied; a recipe change (its
    # accuracy: benchmarks/accuracy.py kd-ad0-bf16-t32-frozen-hd0 against kd-ad0-bf16-t32-frozen)
    "kdapp_2ep_nocache_bf16_t32_frozen_hd0": (2, False, dict(mixed_precision="bf16", teacher_precision="fp32",
                                                             freeze_word_embeddings=True, hidden_dropout=0.0),
                                              "attention and hidden dropout 0, teacher on the fly in fp32, student "
                                              "in bf16, its word embeddings frozen"),
    "kdapp_2ep_cache_bf16_t32_frozen_hd0": (2, True, dict(mixed_precision="bf16", teacher_precision="fp32",
                                                          freeze_word_embeddings=True, hidden_dropout=0.0),
                                            "attention and hidden dropout 0, teacher logits cached in fp32, student "
                                            "in bf16, its word embeddings frozen"),
    # and with every embedding and the student's first layer frozen (--freeze_layers 1): the backward pass stops
    # above them; a recipe change (its accuracy: benchmarks/accuracy.py kd-ad0-bf16-t32-frozen-hd0-fl1 against
    # kd-ad0-bf16-t32-frozen-hd0)
    # (and --freeze_layers 2: only the last layer, the pooler and the classifier train; it costs accuracy, so no target
    # counts its pair: it shows how the cache's gain grows as the student's epoch shrinks). These pairs were measured
    # before kdapp shared the frozen first layer with the teacher, so they run without it (--share_frozen_layers
    # false): the student computes its own embeddings and first layer
    **{f"kdapp_2ep_{arm}_bf16_t32_frozen_hd0_fl{n}": (2, arm == "cache", dict(mixed_precision="bf16",
                                                                             teacher_precision="fp32",
                                                                             freeze_word_embeddings=True,
                                                                             hidden_dropout=0.0, freeze_layers=n,
                                                                             share_frozen_layers=False),
                                                       f"attention and hidden dropout 0, {what}, student in bf16, its "
                                                       f"embeddings and {FIRST_LAYERS[n]} frozen, computed by itself")
       for n in (1, 2)
       for arm, what in (("nocache", "teacher on the fly in fp32"), ("cache", "teacher logits cached in fp32"))},
    # the --freeze_layers 1 pair as kdapp runs it by default (--share_frozen_layers): the student's frozen embeddings
    # and first layer are the teacher's, so it starts from the teacher's hidden state after its first layer
    # (kdapp/shared_prefix.py): on the fly the teacher computes it anyway; with the cache the teacher's pass keeps it
    # for every row. Its accuracy: benchmarks/accuracy.py kd-ad0-bf16-t32-frozen-hd0-fl1-shared
    **{f"kdapp_2ep_{arm}_bf16_t32_frozen_hd0_fl1_shared": (2, arm == "cache", dict(mixed_precision="bf16",
                                                                                  teacher_precision="fp32",
                                                                                  freeze_word_embeddings=True,
                                                                                  hidden_dropout=0.0, freeze_layers=1),
                                                            f"attention and hidden dropout 0, {what}, student in "
                                                            f"bf16, its embeddings and first layer frozen and "
                                                            f"{how}")
       for arm, what, how in (("nocache", "teacher on the fly in fp32", "taken from the teacher's forward"),
                              ("cache", "teacher logits cached in fp32", "kept from the teacher's cache pass"))},
}
# 1-epoch KD runs against the seed-faithful baseline: (ratio key, run, what kdapp ran, note)
TRAINING_RATIOS = [
    ("train_1ep", "kdapp_1ep_attn_dropout", "kdapp",  # the like-for-like row
     "both with the model's attention dropout (0.1)"),
    ("train_1ep_torch_dropout", "kdapp_1ep_torch_dropout", "kdapp with --fast_dropout false",
     "both with the model's attention dropout (0.1): what kdapp gains without its CPU dropout path"),
    ("train_1ep_full_last_layer", "kdapp_1ep_full_last_layer", "kdapp with --cls_only false",
     "both with the model's attention dropout (0.1): what kdapp gains without computing the last layer at [CLS] only"),
    ("train_1ep_ad0", "kdapp_1ep", "kdapp with --attention_dropout 0",
     "a recipe change, not only a faster path: its accuracy is in README (kd-ad0, kd-transfer-masked-ad0)"),
    ("train_1ep_int8_teacher", "kdapp_1ep_int8_teacher", "kdapp with --teacher_precision int8",
     "both with the model's attention dropout; not like-for-like: the int8 teacher's soft targets differ from fp32's "
     "(README, Accuracy: kd-transfer-masked-tint8)"),
    ("train_1ep_bf16", "kdapp_1ep_bf16", "kdapp with --mixed_precision bf16",
     "both with the model's attention dropout; not like-for-like: bf16 arithmetic (README, Accuracy: the -bf16 runs)"),
]
# the logit cache over 2 epochs: (ratio key, no-cache run, cache run, precisions)
CACHE_RATIOS = [("cache_2ep", "kdapp_2ep_nocache", "kdapp_2ep_cache", ""),
                ("cache_2ep_bf16", "kdapp_2ep_nocache_bf16", "kdapp_2ep_cache_bf16", " (bf16 mixed precision)"),
                ("cache_2ep_bf16_t32", "kdapp_2ep_nocache_bf16_t32", "kdapp_2ep_cache_bf16_t32",
                 " (student in bf16, teacher in fp32)"),
                ("cache_2ep_bf16_t32_frozen", "kdapp_2ep_nocache_bf16_t32_frozen", "kdapp_2ep_cache_bf16_t32_frozen",
                 " (student in bf16, teacher in fp32, the student's word embeddings frozen)"),
                ("cache_2ep_bf16_t32_frozen_hd0", "kdapp_2ep_nocache_bf16_t32_frozen_hd0",
                 "kdapp_2ep_cache_bf16_t32_frozen_hd0",
                 " (student in bf16, teacher in fp32, the student's word embeddings frozen, no hidden dropout)"),
                *((f"cache_2ep_bf16_t32_frozen_hd0_fl{n}", f"kdapp_2ep_nocache_bf16_t32_frozen_hd0_fl{n}",
                   f"kdapp_2ep_cache_bf16_t32_frozen_hd0_fl{n}",
                   f" (student in bf16, teacher in fp32, no hidden dropout, the student's embeddings and "
                   f"{FIRST_LAYERS[n]} frozen)") for n in (1, 2)),
                ("cache_2ep_bf16_t32_frozen_hd0_fl1_shared", "kdapp_2ep_nocache_bf16_t32_frozen_hd0_fl1_shared",
                 "kdapp_2ep_cache_bf16_t32_frozen_hd0_fl1_shared",
                 " (student in bf16, teacher in fp32, no hidden dropout, the student's embeddings and first layer "
                 "frozen and taken from the teacher)")]
TARGETS = {"train_1ep": 1.5, "cache_2ep": 1.4, "cache_2ep_bf16_t32": 1.4, "cache_2ep_bf16_t32_frozen": 1.4,
           "cache_2ep_bf16_t32_frozen_hd0": 1.4, "cache_2ep_bf16_t32_frozen_hd0_fl1": 1.4,
           "cache_2ep_bf16_t32_frozen_hd0_fl1_shared": 1.4,
           "infer_fp32": 1.2, "infer_fastest": 2.5,
           "infer_fastest_within": 2.5, "arch": 1.9}
ACCURACY_TOLERANCE = 0.003  # the fast path's accuracy within 0.3 points of fp32's


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- shared measurements
def _best_gflops(step, n: int, repeats: int) -> float:
    """Best-of-`repeats` GFLOP/s of `step()`, an (n x n) by (n x n) product, after one warm-up call."""
    step()  # warm-up: thread pool start, allocations
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return round(2 * n**3 / best / 1e9, 2)


def matmul_gflops(n: int = 2048, dtype=torch.float32, repeats: int = 5) -> float:
    """Best-of-`repeats` GFLOP/s of an (n x n) @ (n x n) matmul: this machine's practical peak at this setting."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    return _best_gflops(lambda: a @ b, n, repeats)


def int8_linear_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` GFLOP/s of an int8 matmul as kdapp's int8 path runs one: an (n x n) float32 input through an
    (n x n) Linear quantized dynamically with per-channel int8 weights (kdapp/quantize.py's quantize_int8), the
    input's quantization included. The yardstick of the int8 paths: with VNNI or AMX int8 they can outrun fp32's
    matmul peak, so a fraction of that would not say how far from their own limit they are."""
    from kdapp.quantize import quantize_int8

    gen = torch.Generator().manual_seed(0)
    quantized = quantize_int8(torch.nn.Sequential(torch.nn.Linear(n, n, bias=False)))  # it swaps children only
    x = torch.randn(n, n, generator=gen)
    with torch.inference_mode():
        return _best_gflops(lambda: quantized(x), n, repeats)


def best_bf16_peak(report: dict, n: int) -> float:
    """bf16's matmul peak measured again, the best seen in this run kept as the bf16 paths' yardstick.

    bf16 matmul speed swings far more than fp32's on a virtual machine with AMX: one best-of-5 at n = 2048 read 895
    GFLOP/s at the start of one run and 2,350 at the start of another (results/speed_cpu_amx*.md; fp32: 302-338 in
    both). So each measurement is the best of 20 at n and at 2n, taken at the start and again before each FLOP/s
    table."""
    seen = report.setdefault("matmul_bf16_gflops_seen", [])
    seen.append(max(matmul_gflops(size, torch.bfloat16, repeats=20) for size in (n, 2 * n)))
    report["matmul_bf16_gflops"] = max(seen)
    return report["matmul_bf16_gflops"]


def seed_split_rows(data: str, n_train: int, n_eval: int):
    """The seed's split with plain `datasets` (as the seed did): (train rows, validation rows)."""
    from datasets import load_dataset

    raw = load_dataset("parquet", data_files=data, split="train")
    parts = raw.shuffle(seed=42).train_test_split(test_size=0.1, seed=42)
    return parts["train"].select(range(n_train)), parts["test"].select(range(min(n_eval, len(parts["test"]))))


def pipeline_pass(model, tokenizer, texts, labels, max_length: int, batch_size: int = 100) -> dict:
    """transformers.pipeline over every text, as the issue writes it: throughput and accuracy."""
    from transformers import pipeline

    clf = pipeline("text-classification", model=model, tokenizer=tokenizer, batch_size=batch_size, truncation=True,
                   max_length=max_length, device="cpu")
    clf(texts[:8])  # warm-up
    start = time.perf_counter()
    out = clf(texts)
    seconds = time.perf_counter() - start
    label2id = {k.upper(): v for k, v in model.config.label2id.items()}
    preds = np.array([label2id.get(o["label"].upper(), int(o["label"].rsplit("_", 1)[-1])
                                   if o["label"].rsplit("_", 1)[-1].isdigit() else -1) for o in out])
    return {"seconds": round(seconds, 2), "samples_per_s": round(len(texts) / seconds, 2),
            "accuracy": round(float((preds == np.asarray(labels)).mean()), 4), "n": len(texts)}


# ---------------------------------------------------------------- the seed-faithful baseline (subprocess)
def run_baseline(spec: dict) -> dict:
    """Seed-faithful KD (1 epoch, padded to max_length, teacher on the fly, default threads) + pipeline inference."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdapp.models import student_from_teacher  # after torch: kdapp's PASSIVE default is too late for libgomp

    tokenizer = AutoTokenizer.from_pretrained(spec["teacher"])
    teacher = AutoModelForSequenceClassification.from_pretrained(spec["teacher"])
    torch.manual_seed(RECIPE["seed"])
    student = student_from_teacher(teacher, 3)
    train, valid = seed_split_rows(spec["data"], spec["n_train"], spec["n_eval"])
    result = {"env": {"omp_wait_policy": OMP_AT_TORCH_IMPORT, "threads": torch.get_num_threads()},
              "matmul_fp32_gflops": matmul_gflops(spec["matmul_n"])}
    if spec["training"]:
        result["training"] = seed_kd_epoch(spec, teacher, student, tokenizer, train)
    if spec["inference"]:
        result["pipeline"] = pipeline_pass(teacher, tokenizer, list(valid["text"]), valid["label"], spec["max_length"])
    return result


def seed_kd_epoch(spec: dict, teacher, student, tokenizer, train) -> dict:
    """The seed's KD recipe: reviews padded to max_length, a Trainer subclass running the teacher on the fly."""
    import torch.nn.functional as F
    from transformers import Trainer, TrainingArguments

    max_length = spec["max_length"]
    train = train.map(lambda b: tokenizer(b["text"], padding="max_length", truncation=True, max_length=max_length),
                      batched=True, remove_columns=[c for c in train.column_names if c != "label"])
    useful = [int(sum(m)) for m in train["attention_mask"]]  # real tokens per row (the rest is padding)
    alpha, temperature = RECIPE["alpha"], RECIPE["temperature"]

    class SeedKDTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = model(**inputs)
            with torch.no_grad():
                t = teacher(**{k: v for k, v in inputs.items() if k != "labels"}).logits
            kd = F.kl_div(F.log_softmax(out.logits / temperature, -1), F.softmax(t / temperature, -1),
                          reduction="batchmean") * temperature**2
            loss = alpha * out.loss + (1 - alpha) * kd
            return (loss, out) if return_outputs else loss

    teacher.eval()
    args = TrainingArguments(output_dir=spec["output_dir"], num_train_epochs=1,
                             per_device_train_batch_size=RECIPE["per_device_train_batch_size"],
                             learning_rate=RECIPE["learning_rate"], warmup_steps=0.1, seed=RECIPE["seed"],
                             save_strategy="no", eval_strategy="no", logging_steps=50, report_to="none",
                             use_cpu=True, disable_tqdm=True)
    trainer = SeedKDTrainer(model=student, args=args, train_dataset=train, processing_class=tokenizer)
    metrics = trainer.train().metrics
    return {"train_runtime_s": round(metrics["train_runtime"], 2),
            "train_samples_per_second": metrics["train_samples_per_second"],
            "rows": len(train), "useful_tokens": sum(useful), "executed_tokens": len(train) * max_length,
            "attention_dropout": None}  # the model's own


def baseline_in_subprocess(spec: dict, work: Path) -> dict:
    spec_path, out_path = work / "baseline_spec.json", work / "baseline_result.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}  # libgomp's own
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--baseline_worker", str(spec_path),
                    "--worker_out", str(out_path)], env=env, cwd=work, check=True)
    return json.loads(out_path.read_text())


# ---------------------------------------------------------------- kdapp's paths (this process)
def ensure_teacher(args, work: Path) -> tuple[str, str]:
    """(teacher folder, how it was obtained): --teacher, the cpu-scale checkpoint, or a short fine-tune here."""
    from kdapp.checkpoints import is_complete
    from kdapp.config import RunConfig
    from kdapp.train import train_teacher

    if args.teacher:
        return str(Path(args.teacher).resolve()), "given (--teacher)"
    if is_complete(DEFAULT_TEACHER):
        return str(DEFAULT_TEACHER), "checkpoints/cpu-scale/teacher (benchmarks/accuracy.py)"
    log(f"no fine-tuned teacher given: fine-tuning MiniLM for {args.teacher_steps} steps (accuracies will be modest)")
    cfg = RunConfig(kind="teacher", model="minilm", data=args.data, max_train_samples=args.n_reviews,
                    max_eval_samples=64, max_length=args.max_length, max_steps=args.teacher_steps,
                    learning_rate=1e-4, warmup_steps=0.1, eval_strategy="no", output_dir=str(work / "teacher"),
                    save_steps=10**9)
    return str(train_teacher(cfg).output_dir), f"MiniLM fine-tuned here for {args.teacher_steps} steps"


def kd_run(args, teacher: str, work: Path, name: str, epochs: float, cache: bool, **overrides) -> dict:
    """One distill_student run: wall time (loading and the cache pass included) and the Trainer's own numbers."""
    import kdapp.distill as kdistill
    import kdapp.train as ktrain
    from kdapp.cache import CACHE_DIR
    from kdapp.checkpoints import load_run_info
    from kdapp.config import RunConfig

    spent = {"cache_s": 0.0, "teacher_s": 0.0}
    original, original_forward = ktrain.teacher_logits, kdistill.teacher_forward

    def timed(function, key: str):
        def run(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start
        return run

    cfg = RunConfig(kind="distill", teacher=teacher, student="from-teacher", student_layers=3, data=args.data,
                    max_train_samples=args.n_reviews, max_eval_samples=args.n_score, max_length=args.max_length,
                    num_train_epochs=epochs, warmup_steps=0.1, cache_teacher_logits=cache, eval_strategy="no",
                    save_steps=10**9, logging_steps=50, output_dir=str(work / name), report_to="none",
                    **(RECIPE | KDAPP_TRAINING | overrides))
    # every run starts with an empty cache: two runs with the same teacher at the same precision share its file, so
    # without this the second would time a warm cache
    shutil.rmtree(CACHE_DIR, ignore_errors=True)
    # the teacher's pass of --cache_teacher_logits (before trainer.train()), and its forward on the fly in each step
    ktrain.teacher_logits, kdistill.teacher_forward = timed(original, "cache_s"), timed(original_forward, "teacher_s")
    start = time.perf_counter()
    try:
        result = ktrain.distill_student(cfg)
    finally:
        ktrain.teacher_logits, kdistill.teacher_forward = original, original_forward
    wall = time.perf_counter() - start
    m, meta = result.metrics, load_run_info(result.output_dir).run_config["meta"]
    return {"wall_s": round(wall, 2), "train_runtime_s": m["train_runtime_s"],
            "train_samples_per_second": m["train_samples_per_second"], "cache_s": round(spent["cache_s"], 2),
            "teacher_on_the_fly_s": round(spent["teacher_s"], 2),
            "epochs": epochs, "cached": cache, "attention_dropout": cfg.attention_dropout,
            "hidden_dropout": cfg.hidden_dropout,
            "teacher_precision": meta["teacher_precision_effective"], "fast_dropout": cfg.fast_dropout,
            "dropout_path": meta["dropout_path"], "mixed_precision": meta["mixed_precision_effective"],
            "last_layer": meta["last_layer"], "frozen_parameters": meta["frozen_parameters"],
            "freeze_layers": cfg.freeze_layers, "shared_layers": meta["shared_layers"],
            "shared_layer_states_kept": meta["shared_layer_states_kept"], "output_dir": str(result.output_dir)}


def kdapp_pass(model, tokenizer, texts, labels, max_length: int, precision: str, batch_size: int = 100,
               max_tokens="auto") -> dict:
    """kdapp's fast path (tokenize, length-sorted batches of at most batch_size rows and, on CPU, CPU_BATCH_TOKENS
    tokens, dynamic padding, last layer at [CLS] only) at `precision`: throughput, accuracy."""
    from kdapp.benchmark import state_dict_size_mb
    from kdapp.inference import batch_tokens, predict_logits, prepare_model

    prepared = prepare_model(model, precision, "cpu")
    predict_logits(prepared, tokenizer, texts[:8], max_length, batch_size, max_tokens=max_tokens)  # warm-up
    start = time.perf_counter()
    logits = predict_logits(prepared, tokenizer, texts, max_length, batch_size, max_tokens=max_tokens)
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 2), "samples_per_s": round(len(texts) / seconds, 2),
            "accuracy": round(float((logits.argmax(-1) == np.asarray(labels)).mean()), 4), "n": len(texts),
            "size_mb": state_dict_size_mb(prepared), "last_layer": "cls-only",
            "batch_size": batch_size, "max_batch_tokens": batch_tokens("cpu", max_tokens)} | (
                {"int8": prepared.kdapp_int8} if precision == "int8" else {})


# torch.profiler op names -> where the time of kdapp's inference path goes (self time of each op)
OP_GROUPS = {"quantized::linear_dynamic": "linear", "aten::addmm": "linear", "aten::mm": "linear",
             "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::bmm": "attention",
             "aten::_softmax": "attention", "aten::gelu": "gelu"}


def profile_pass(model, tokenizer, texts, max_length: int, precision: str, batch_size: int = 100) -> dict:
    """kdapp's path at `precision` under torch.profiler: each op group's share of the time (self CPU time on the
    calling thread, which waits for its OpenMP workers) and the attention's achieved FLOP/s, counted from the shapes
    its kernel received (QK^T and PV: 4 * batch * heads * queries * keys * head size)."""
    from torch.profiler import ProfilerActivity, profile

    from kdapp.inference import predict_logits, prepare_model

    prepared = prepare_model(model, precision, "cpu")
    predict_logits(prepared, tokenizer, texts[:8], max_length, batch_size)  # warm-up
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        predict_logits(prepared, tokenizer, texts, max_length, batch_size)
        seconds = time.perf_counter() - start
    groups = dict.fromkeys(("linear", "attention", "gelu", "rest"), 0.0)
    attention_flops = 0.0
    for event in prof.events():
        group = OP_GROUPS.get(event.name, "rest")
        groups[group] += event.self_cpu_time_total / 1e6
        if event.name == "aten::_scaled_dot_product_flash_attention_for_cpu":
            (b, h, q, d), (_, _, k, _) = event.input_shapes[0], event.input_shapes[1]
            attention_flops += 4 * b * h * q * k * d
    total = sum(groups.values())
    return {"n": len(texts), "seconds": round(seconds, 2), "samples_per_s": round(len(texts) / seconds, 2),
            "share": {g: round(t / total, 3) for g, t in groups.items()},
            "attention_gflop_per_s": round(attention_flops / groups["attention"] / 1e9, 2) if attention_flops else None}


def model_flops(model, lengths: list[int], cls_only: bool = False) -> float:
    """Forward FLOPs the path executes: with cls_only, the last layer's at [CLS] only (kdapp/cls_only.py)."""
    from kdapp.benchmark import _layers_hidden, forward_flops, non_embedding_params

    layers, hidden = _layers_hidden(model.config)
    return forward_flops(non_embedding_params(model), layers, hidden, lengths, cls_only=cls_only)


# ---------------------------------------------------------------- the whole comparison
def main() -> None:
    args = parse_args()
    if BASELINE_WORKER:
        Path(args.worker_out).write_text(json.dumps(run_baseline(json.loads(Path(args.baseline_worker).read_text()))))
        return
    if args.report_only:
        out = Path(args.out).resolve()
        report = json.loads(out.with_suffix(".json").read_text())
        report["ratios"] = ratios(report)
        write_report(report, out)
        return
    import kdapp  # noqa: F401
    from kdapp.benchmark import bench_env, markdown_table, native_bf16, run_benchmark
    from kdapp.encoding import encode
    from kdapp.models import count_parameters, load_pair, student_from_teacher

    args.data = str(Path(args.data).resolve())
    if not Path(args.data).is_file():
        sys.exit(f"{args.data} not found: pass --data or run from a checkout with ../shared/data/imdb beside it")
    out = Path(args.out).resolve()
    work = Path(tempfile.mkdtemp(prefix="kdapp-speed-"))
    os.chdir(work)  # the logit cache and the runs land here (kd_run empties the cache before each run)
    started = time.perf_counter()
    report = {"setup": vars(args) | {"env": bench_env("cpu"), "kdapp_threads": KDAPP_THREADS}, "training": {},
              "inference": {}, "flops": {}}
    try:
        teacher_dir, how = ensure_teacher(args, work)
        report["setup"].update(teacher=teacher_dir, teacher_source=how)
        teacher, tokenizer = load_pair(teacher_dir)
        train_rows, valid_rows = seed_split_rows(args.data, args.n_reviews, args.n_reviews)
        train_len = [len(x) for x in encode(tokenizer, list(train_rows["text"]), args.max_length)]
        texts, labels = list(valid_rows["text"]), list(valid_rows["label"])
        valid_len = [len(x) for x in encode(tokenizer, texts, args.max_length)]
        student0 = student_from_teacher(teacher, 3)
        report["setup"].update(train_rows=len(train_rows), eval_rows=len(texts),
                               mean_train_tokens=round(float(np.mean(train_len)), 1),
                               teacher_params=count_parameters(teacher), student_params=count_parameters(student0))
        peak = matmul_gflops(args.matmul_n)
        report["matmul_fp32_gflops"] = {"passive": peak}
        log(f"fp32 matmul peak ({KDAPP_THREADS}, {torch.get_num_threads()} threads): {peak} GFLOP/s")
        # bf16 paths are judged against bf16's own peak: with AMX it is many times fp32's (emulated without it)
        peak_bf16 = best_bf16_peak(report, args.matmul_n) if native_bf16() else None
        report["matmul_bf16_gflops"] = peak_bf16
        if peak_bf16:
            log(f"bf16 matmul peak ({KDAPP_THREADS}): {peak_bf16} GFLOP/s")
        # int8 paths against int8's own peak (a dynamically quantized Linear, as kdapp's int8 path runs)
        peak_int8 = int8_linear_gflops(args.matmul_n) if "inference" in args.parts else None
        report["matmul_int8_gflops"] = peak_int8
        if peak_int8:
            log(f"int8 dynamic Linear peak ({KDAPP_THREADS}): {peak_int8} GFLOP/s")

        if ("training" in args.parts or "inference" in args.parts) and not args.no_baseline:
            log("baseline (subprocess, default OpenMP): seed-faithful KD, 1 epoch" +
                (" + pipeline inference" if "inference" in args.parts else ""))
            base = baseline_in_subprocess({"teacher": teacher_dir, "data": args.data, "n_train": args.n_reviews,
                                           "n_eval": args.n_reviews, "max_length": args.max_length,
                                           "output_dir": str(work / "baseline"), "matmul_n": args.matmul_n,
                                           "training": "training" in args.parts,
                                           "inference": "inference" in args.parts}, work)
            report["matmul_fp32_gflops"]["default"] = base["matmul_fp32_gflops"]
            peak = max(peak, base["matmul_fp32_gflops"])  # the machine's best: one yardstick for every path
            report["setup"]["baseline_env"] = base["env"]
            if "training" in base:
                report["training"]["seed_baseline_1ep"] = base["training"]
            if "pipeline" in base:
                report["inference"]["pipeline_default_env"] = base["pipeline"]

        student_dir = None
        if "training" in args.parts:
            for name in args.training_runs:
                epochs, cache, overrides, what = KD_RUNS[name]
                log(f"kdapp KD: {name} ({what})")
                report["training"][name] = kd_run(args, teacher_dir, work, name, epochs, cache, **overrides)
            # further rounds of each cache pair, in turn reversed (A B, then B A, ...): the machine's drift over the
            # minutes a pair takes then weighs on both arms alike
            pairs = [(nc, c) for _, nc, c, _ in CACHE_RATIOS if {nc, c} <= set(args.training_runs)]
            for r in range(2, args.cache_rounds + 1):
                for pair in pairs:
                    for name in pair[::-1] if r % 2 == 0 else pair:
                        epochs, cache, overrides, what = KD_RUNS[name]
                        log(f"kdapp KD, round {r}: {name} ({what})")
                        report["training"][f"{name}#{r}"] = kd_run(args, teacher_dir, work, f"{name}-{r}", epochs,
                                                                   cache, **overrides)
            student_dir = report["training"].get("kdapp_2ep_cache", {}).get("output_dir")
            # forward + backward (3x) of the student and one teacher forward per epoch (on the fly): the FLOPs each
            # path executes, so with the last layer at [CLS] only (kdapp's default) fewer than the baseline's
            if peak_bf16:  # measured again: its speed drifts (best_bf16_peak)
                peak_bf16 = best_bf16_peak(report, args.matmul_n)
            flops_student = 3 * model_flops(student0, train_len)
            flops_teacher = model_flops(teacher, train_len)
            t = report["training"]
            b = t.get("seed_baseline_1ep")  # None with --no_baseline
            for name in ("kdapp_1ep", "kdapp_1ep_attn_dropout", "kdapp_1ep_torch_dropout", "kdapp_1ep_full_last_layer",
                         "kdapp_1ep_bf16"):
                if name in t:
                    last = t[name].get("last_layer") == "cls-only"
                    executed = 3 * model_flops(student0, train_len, last) + model_flops(teacher, train_len, last)
                    report["flops"][f"train_{name}"] = _fraction(executed / t[name]["train_runtime_s"],
                                                                 *_peak(name, peak, peak_bf16))
            if b is not None:
                report["flops"]["train_baseline_1ep"] = _fraction((flops_student + flops_teacher)
                                                                  / b["train_runtime_s"], peak)
                padded = [args.max_length] * len(train_len)  # what the baseline computes, padding included
                executed = 3 * model_flops(student0, padded) + model_flops(teacher, padded)
                report["flops"]["train_baseline_1ep_executed_incl_padding"] = _fraction(
                    executed / b["train_runtime_s"], peak)

        if "inference" in args.parts:
            inf = report["inference"]
            log(f"inference: transformers.pipeline ({KDAPP_THREADS}, this process)")
            inf["pipeline"] = pipeline_pass(teacher, tokenizer, texts, labels, args.max_length)
            for precision in ("fp32", "bf16", "int8"):
                # without avx512_bf16/AMX, bf16 is emulated (~10x slower than fp32 here): time a subset only
                n = len(texts) if precision != "bf16" or native_bf16() else min(len(texts), args.bf16_subset)
                subset = "" if n == len(texts) else f" (first {n} reviews: no native bf16)"
                log(f"inference: kdapp {precision}{subset}")
                inf[f"kdapp_{precision}"] = kdapp_pass(teacher, tokenizer, texts[:n], labels[:n], args.max_length,
                                                       precision)
            student, student_tok = load_pair(student_dir) if student_dir else (student0, tokenizer)
            for precision in ("fp32", "int8"):
                log(f"inference: student {precision}")
                inf[f"student_{precision}"] = kdapp_pass(student, student_tok, texts, labels, args.max_length,
                                                         precision)
                inf[f"student_{precision}"]["trained"] = student_dir is not None
            if peak_bf16:
                peak_bf16 = best_bf16_peak(report, args.matmul_n)
            for key in ("pipeline", "kdapp_fp32", "kdapp_bf16", "kdapp_int8"):
                share = inf[key]["n"] / len(texts)  # the bf16 subset does a share of the work
                f_teacher = model_flops(teacher, valid_len, inf[key].get("last_layer") == "cls-only")
                report["flops"][f"infer_{key}"] = _fraction(f_teacher * share / inf[key]["seconds"],
                                                            *_peak(key, peak, peak_bf16, peak_int8))
            report["flops"]["infer_student_fp32"] = _fraction(model_flops(student0, valid_len, True)
                                                              / inf["student_fp32"]["seconds"], peak)

        if "batch_tokens" in args.parts:  # what sets CPU_BATCH_TOKENS (kdapp/inference.py)
            n = min(len(texts), args.batch_tokens_reviews)
            sweep = report["batch_tokens"] = []
            for batch_size in (100, 8):
                log(f"batch tokens: pipeline, batch_size {batch_size}, {n} reviews")
                sweep.append({"path": "pipeline", "precision": "fp32", "batch_size": batch_size, "max_tokens": None,
                              **pipeline_pass(teacher, tokenizer, texts[:n], labels[:n], args.max_length, batch_size)})
            for precision in ("fp32", "int8"):
                for max_tokens in (None, 1024, 2048, 4096):
                    log(f"batch tokens: kdapp {precision}, batch_size 100, max_tokens {max_tokens}, {n} reviews")
                    sweep.append({"path": "kdapp", "precision": precision, "batch_size": 100, "max_tokens": max_tokens,
                                  **kdapp_pass(teacher, tokenizer, texts[:n], labels[:n], args.max_length, precision,
                                               max_tokens=max_tokens)})

        if "profile" in args.parts:  # where the int8 path's time goes: what is left to gain on this CPU
            n = min(len(texts), args.profile_reviews)
            report["profile"] = {}
            for precision in ("fp32", "int8"):
                log(f"profile: kdapp {precision}, {n} reviews")
                report["profile"][precision] = profile_pass(teacher, tokenizer, texts[:n], args.max_length, precision)
                gflops = report["profile"][precision]["attention_gflop_per_s"]
                if gflops:
                    report["profile"][precision]["attention_fraction_of_matmul_peak"] = round(gflops / peak, 3)

        if "arch" in args.parts:
            log(f"architectures: bert-base vs distilbert-base, batch {args.arch_batch} x {args.arch_seq} tokens")
            arch = run_benchmark(["arch:bert-base-uncased", "arch:distilbert-base-uncased"], (args.arch_batch,),
                                 args.arch_seq, "cpu", ("fp32",), n_texts=args.arch_batch, repeats=args.arch_repeats)
            report["arch"] = arch
            report["arch_table"] = markdown_table(arch)
            for r in arch["rows"]:
                report["flops"][f"infer_{r['model']}"] = _fraction(r["achieved_gflop_per_s"] * 1e9, peak)
    finally:
        os.chdir(ROOT)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["ratios"] = ratios(report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    write_report(report, out)


def _peak(path: str, peak_fp32: float, peak_bf16: float | None,
          peak_int8: float | None = None) -> tuple[float, str]:
    """The yardstick for a path: bf16's matmul peak for a bf16 path where bf16 is native, int8's (a dynamically
    quantized Linear) for an int8 path where it was measured, else fp32's."""
    if "bf16" in path and peak_bf16:
        return peak_bf16, "bf16"
    if "int8" in path and peak_int8:
        return peak_int8, "int8"
    return peak_fp32, "fp32"


def _fraction(flop_per_s: float, peak_gflops: float, peak: str = "fp32") -> dict:
    gflops = flop_per_s / 1e9
    return {"gflop_per_s": round(gflops, 2), "fraction_of_matmul_peak": round(gflops / peak_gflops, 3), "peak": peak}


def ratios(report: dict) -> list[dict]:
    """Each comparison of the issue: value (higher is better for kdapp), target, met."""
    out, t, inf = [], report["training"], report["inference"]

    def add(key, what, value, extra=""):
        target = TARGETS.get(key)
        out.append({"key": key, "what": what, "ratio": round(value, 3), "target": target,
                    "met": None if target is None else bool(value >= target), "note": extra})

    if "seed_baseline_1ep" in t:
        base = t["seed_baseline_1ep"]["train_samples_per_second"]
        for key, run, what, note in TRAINING_RATIOS:
            if run in t:
                add(key, f"KD training samples/s, 1 epoch: {what} / seed-faithful Trainer",
                    t[run]["train_samples_per_second"] / base,
                    f"{note}; kdapp's dropout: {_dropout_label(run, t[run])}")
    if "kdapp_1ep_bf16" in t and "kdapp_1ep_attn_dropout" in t:
        add("train_1ep_bf16_vs_fp32", "KD training samples/s, 1 epoch: kdapp bf16 / kdapp fp32",
            t["kdapp_1ep_bf16"]["train_samples_per_second"] / t["kdapp_1ep_attn_dropout"]["train_samples_per_second"],
            "both with the model's attention dropout; native bf16 on this CPU: "
            f"{report['setup'].get('env', {}).get('native_bf16')}")
    for key, no_cache, cached, precision in CACHE_RATIOS:
        if no_cache in t and cached in t:
            nc, c = _rounds(t, no_cache), _rounds(t, cached)  # --cache_rounds: every round's wall time, summed
            wall_nc, wall_c = (sum(r["wall_s"] for r in runs) for runs in (nc, c))
            cache_s = sum(r["cache_s"] for r in c)
            per_round = (f"; {len(nc)} rounds, alternating order: "
                         + ", ".join(f"{a['wall_s'] / b['wall_s']:.3f}x" for a, b in zip(nc, c))) if len(nc) > 1 else ""
            add(key, f"2 epochs wall time{precision}: no cache / logit cache", wall_nc / wall_c,
                f"cache pass {cache_s / len(c):.0f} s included; with a warm cache from an earlier run (sweep, rerun): "
                f"{wall_nc / (wall_c - cache_s):.2f}x (derived: wall minus cache pass){per_round}"
                + _cache_parts_note(nc, c, TARGETS.get(key)))
    if "kdapp_fp32" in inf:
        p = inf["pipeline"]["samples_per_s"]
        fp32 = inf["kdapp_fp32"]
        add("infer_fp32", "inference reviews/s: kdapp fp32 / pipeline", fp32["samples_per_s"] / p,
            _vs_default(inf, fp32))
        best = max(("kdapp_fp32", "kdapp_bf16", "kdapp_int8"), key=lambda k: inf[k]["samples_per_s"])
        change = (inf[best]["accuracy"] - fp32["accuracy"]) * 100
        add("infer_fastest", f"inference reviews/s: fastest kdapp path ({best.split('_')[1]}) / pipeline",
            inf[best]["samples_per_s"] / p, f"accuracy {change:+.2f} points vs fp32 (target: within 0.3); "
                                            + _vs_default(inf, inf[best]))
        # the target as written: the fastest path whose accuracy stays within 0.3 points of fp32 (a bf16 subset on a
        # CPU without native bf16 is not comparable: other reviews)
        close = [k for k in ("kdapp_fp32", "kdapp_bf16", "kdapp_int8") if k in inf and inf[k]["n"] == fp32["n"]
                 and abs(inf[k]["accuracy"] - fp32["accuracy"]) <= ACCURACY_TOLERANCE + 1e-9]
        best_close = max(close, key=lambda k: inf[k]["samples_per_s"])
        change = (inf[best_close]["accuracy"] - fp32["accuracy"]) * 100
        add("infer_fastest_within", f"inference reviews/s: fastest kdapp path within 0.3 points of fp32 "
                                    f"({best_close.split('_')[1]}) / pipeline",
            inf[best_close]["samples_per_s"] / p, f"accuracy {change:+.2f} points vs fp32")
        add("student_teacher", "inference reviews/s: student / teacher (kdapp fp32, batch_size 100 and its CPU "
                               "tokens-per-batch limit)",
            inf["student_fp32"]["samples_per_s"] / fp32["samples_per_s"])
    if "arch" in report:
        rows = {r["model"]: r for r in report["arch"]["rows"]}
        add("arch", f"throughput at batch {rows['arch:bert-base-uncased']['batch_size']}: distilbert-base / bert-base",
            rows["arch:distilbert-base-uncased"]["throughput_samples_per_s"]
            / rows["arch:bert-base-uncased"]["throughput_samples_per_s"])
    return out


def cache_parts(no_cache: list[dict], cached: list[dict]) -> dict:
    """Where the two arms' wall time goes, per epoch, averaged over rounds (seconds):
    teacher: its forward on the fly (the no-cache arm's training minus the cache arm's, the student's steps taken to
    cost the same in both); student: the cache arm's training; cache_pass; fixed: the rest of each arm's wall time
    (loading, tokenizing, saving, the end-of-run score). Where the no-cache runs timed the teacher's forward in each
    step (teacher_on_the_fly_s), also teacher_timed, that time per epoch, and student_no_cache, the rest of that arm's
    epoch: the student's steps as they cost beside the teacher."""
    def mean(runs, key):
        return sum(r[key] for r in runs) / len(runs)

    epochs = cached[0]["epochs"]
    student = mean(cached, "train_runtime_s") / epochs
    parts = {"epochs": epochs, "teacher": mean(no_cache, "train_runtime_s") / epochs - student, "student": student,
             "cache_pass": mean(cached, "cache_s"),
             "fixed_no_cache": mean(no_cache, "wall_s") - mean(no_cache, "train_runtime_s"),
             "fixed_cache": mean(cached, "wall_s") - mean(cached, "train_runtime_s") - mean(cached, "cache_s")}
    if all("teacher_on_the_fly_s" in r for r in no_cache):
        parts["teacher_timed"] = mean(no_cache, "teacher_on_the_fly_s") / epochs
        parts["student_no_cache"] = mean(no_cache, "train_runtime_s") / epochs - parts["teacher_timed"]
    return parts


def student_epoch_for(ratio: float, parts: dict) -> float:
    """The student's epoch (s) at or below which the cache pays `ratio`, the other parts as measured:
    (E*t + E*s + f_nc) / (t_c + E*s + f_c) >= ratio, solved for s (E epochs)."""
    e = parts["epochs"]
    gain = e * parts["teacher"] + parts["fixed_no_cache"] - ratio * (parts["cache_pass"] + parts["fixed_cache"])
    return gain / (e * (ratio - 1))


def _cache_parts_note(no_cache: list[dict], cached: list[dict], target: float | None) -> str:
    p = cache_parts(no_cache, cached)
    timed = (f" (timed in its steps: {p['teacher_timed']:.1f} s, beside {p['student_no_cache']:.1f} s of the "
             f"student's)") if "teacher_timed" in p else ""
    note = (f"; per epoch: teacher on the fly {p['teacher']:.1f} s{timed}, cache pass {p['cache_pass']:.1f} s, "
            f"student {p['student']:.1f} s (fixed per run: {p['fixed_no_cache']:.1f} s without the cache, "
            f"{p['fixed_cache']:.1f} s with it)")
    if target:
        bound = student_epoch_for(target, p)
        note += (f"; {target}x needs the student's epoch at or below {bound:.1f} s" if bound > 0 else
                 f"; no student epoch, however short, gives {target}x with these parts")
    return note


def _rounds(training: dict, name: str) -> list[dict]:
    """A run and its further rounds (name#2, name#3, ...), in round order."""
    rounds = [k for k in training if k.startswith(name + "#")]
    return [training[name]] + [training[k] for k in sorted(rounds, key=lambda k: int(k.split("#")[1]))]


def _shared_label(run: dict) -> str:
    """The layers the student took from the teacher (kdapp/shared_prefix.py), and for how many rows the cache pass
    kept them; '-' for none."""
    if not run.get("shared_layers"):
        return "-"
    kept = run.get("shared_layer_states_kept")
    return f"{run['shared_layers']} layer" + ("" if kept is None else f", kept for {kept} rows")


def _dropout_label(name: str, run: dict) -> str:
    if name.startswith("seed_"):
        return "PyTorch"
    if "dropout_path" in run:  # what the run used (bf16 runs timed before kdapp's path served bf16 used PyTorch's)
        return "kdapp CPU" if run["dropout_path"] == "kdapp-cpu" else "PyTorch"
    return "kdapp CPU" if run.get("fast_dropout", False) else "PyTorch"  # runs timed before the path existed: PyTorch


def _vs_default(inf: dict, path: dict) -> str:
    if "pipeline_default_env" not in inf:
        return ""
    ratio = path["samples_per_s"] / inf["pipeline_default_env"]["samples_per_s"]
    return f"vs pipeline with default OpenMP threads: {ratio:.2f}x"


def write_report(report: dict, out: Path) -> None:
    s, env = report["setup"], report["setup"]["env"]
    lines = [f"# kdapp speed vs the usual tools ({s['train_rows']} training / {s['eval_rows']} validation reviews, "
             f"max_length {s['max_length']})", "",
             f"Machine: {env['cpu_model']}, {env['cpu_count']} CPUs ({', '.join(env['cpu_flags']) or 'no AVX flags'}"
             f"; native bf16: {env['native_bf16']}), torch {env['torch']}, transformers {env['transformers']}; "
             f"load average at start {env['load_avg_1m']}. kdapp's runs: OpenMP wait policy "
             f"{s.get('kdapp_threads', 'PASSIVE')}. Teacher: {s['teacher_source']}. "
             f"Total {report['seconds']:.0f} s.",
             "", "| comparison | ratio | target | met | note |", "|---|---|---|---|---|"]
    for r in report["ratios"]:
        met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
        lines.append(f"| {r['what']} | {r['ratio']:.2f}x | {r['target'] or '-'} | {met} | {r['note']} |")
    if report["training"]:
        lines += ["", "| training run | samples/s | train s | wall s | cache pass s | attention dropout | hidden dropout "
                  "| dropout path | last layer | teacher | precision | word embeddings | frozen layers "
                  "| taken from the teacher |", "|---" * 14 + "|"]
        for k, v in report["training"].items():
            dropout = v.get("attention_dropout", "-")
            lines.append(f"| {k} | {v['train_samples_per_second']:.2f} | {v['train_runtime_s']:.1f} | "
                         f"{v.get('wall_s', '-')} | {v.get('cache_s', '-')} | "
                         f"{'model default (0.1)' if dropout is None else dropout} | "
                         f"{'model default (0.1)' if v.get('hidden_dropout') is None else v['hidden_dropout']} | "
                         f"{_dropout_label(k, v)} | "
                         f"{v.get('last_layer', 'full')} | {v.get('teacher_precision', 'fp32').replace('auto', 'fp32')} "
                         f"| {v.get('mixed_precision', 'fp32')} | "
                         f"{'frozen' if v.get('frozen_parameters') else 'trained'} | {v.get('freeze_layers', 0)} | "
                         f"{_shared_label(v)} |")
    if report["inference"]:
        lines += ["", "| inference path | reviews/s | accuracy | reviews | size MB | last layer |",
                  "|---|---|---|---|---|---|"]
        for k, v in report["inference"].items():
            name = f"{k} ({v['int8']})" if "int8" in v else k
            lines.append(f"| {name} | {v['samples_per_s']:.1f} | {100 * v['accuracy']:.2f} % | {v['n']} | "
                         f"{v.get('size_mb', '-')} | {v.get('last_layer', 'full')} |")
    if report.get("batch_tokens"):
        lines += ["", "Tokens per batch on CPU (the teacher, the first validation reviews; kdapp's rows: batch_size "
                      "100 and at most max_tokens tokens once padded):", "",
                  "| path | precision | batch_size | max_tokens | reviews/s | reviews |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['path']} | {r['precision']} | {r['batch_size']} | {r['max_tokens'] or '-'} | "
                  f"{r['samples_per_s']:.1f} | {r['n']} |" for r in report["batch_tokens"]]
    if report.get("profile"):
        lines += ["", "Where the teacher's inference time goes (torch.profiler, self time per op group, the first "
                      "validation reviews; attention is SDPA in fp32 on every path):", "",
                  "| path | reviews/s (profiled) | Linear layers | attention | GELU | rest | attention GFLOP/s "
                  "(share of fp32 matmul peak) | reviews |", "|---|---|---|---|---|---|---|---|"]
        for k, v in report["profile"].items():
            sh = v["share"]
            attention = (f"{v['attention_gflop_per_s']} ({v.get('attention_fraction_of_matmul_peak', 0):.0%})"
                         if v["attention_gflop_per_s"] else "-")
            lines.append(f"| kdapp {k} | {v['samples_per_s']:.1f} | {sh['linear']:.0%} | {sh['attention']:.0%} | "
                         f"{sh['gelu']:.0%} | {sh['rest']:.0%} | {attention} | {v['n']} |")
    peaks = report["matmul_fp32_gflops"]
    seen = report.get("matmul_bf16_gflops_seen")
    bf16 = (f"; bf16 matmul, the yardstick of the bf16 paths: {report['matmul_bf16_gflops']}"
            + (f", the best of {len(seen)} measurements in the run ({min(seen)}-{max(seen)})" if seen else "")
            if report.get("matmul_bf16_gflops") else "")
    int8 = (f"; int8 (a dynamically quantized Linear with per-channel weights, its input's quantization included), "
            f"the yardstick of the int8 paths: {report['matmul_int8_gflops']}" if report.get("matmul_int8_gflops")
            else "")
    lines += ["", f"Achieved model FLOP/s vs this machine's best measured matmul (fp32 GFLOP/s: {peaks}{bf16}{int8}):",
              "",
              "| path | GFLOP/s | fraction of peak | peak |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['gflop_per_s']} | {v['fraction_of_matmul_peak']:.1%} | {v.get('peak', 'fp32')} |"
              for k, v in report["flops"].items()]
    if "arch_table" in report:
        lines += ["", report["arch_table"]]
    text = "\n".join(lines)
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="The full run takes over an hour on 2 cores; --parts splits it.")
    p.add_argument("--n_reviews", type=int, default=2000, help="training reviews, and validation reviews to classify")
    p.add_argument("--teacher", help=f"fine-tuned teacher folder (default: {DEFAULT_TEACHER.relative_to(ROOT)} if "
                                     "complete, else MiniLM fine-tuned here for --teacher_steps)")
    p.add_argument("--teacher_steps", type=int, default=100, help="steps of the teacher made here when none is given")
    p.add_argument("--data", default=str(DATA), help="IMDb parquet (read, never copied)")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--n_score", type=int, default=200, help="validation rows each KD run scores at its end")
    p.add_argument("--parts", nargs="+", default=["training", "inference", "batch_tokens", "arch"],
                   choices=["training", "inference", "batch_tokens", "profile", "arch"], help="what to measure")
    p.add_argument("--batch_tokens_reviews", type=int, default=400,
                   help="validation reviews of the batch_tokens part (kdapp's tokens-per-batch limit on CPU)")
    p.add_argument("--profile_reviews", type=int, default=400,
                   help="validation reviews of the profile part (where the fp32 and int8 paths spend their time)")
    p.add_argument("--training_runs", nargs="+", default=list(KD_RUNS), choices=list(KD_RUNS),
                   help="kdapp KD runs of the training part (the seed-faithful baseline always runs with it)")
    p.add_argument("--no_baseline", action="store_true",
                   help="skip the seed-faithful baseline (and the pipeline): for runs that compare kdapp's own runs "
                        "only, as the logit-cache pairs do")
    p.add_argument("--cache_rounds", type=int, default=1,
                   help="rounds of each cache pair in --training_runs, the order reversed each round; the ratio "
                        "sums every round's wall times")
    p.add_argument("--arch_batch", type=int, default=100)
    p.add_argument("--arch_seq", type=int, default=128)
    p.add_argument("--arch_repeats", type=int, default=2)
    p.add_argument("--matmul_n", type=int, default=2048)
    p.add_argument("--bf16_subset", type=int, default=100, help="reviews timed in bf16 on a CPU without native bf16")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every code path")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder (runs, cache)")
    p.add_argument("--report_only", action="store_true",
                   help="re-tabulate the ratios and the markdown from --out's .json, measuring nothing")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed_cpu"), help="report path (.md, .json)")
    p.add_argument("--baseline_worker", help=argparse.SUPPRESS)
    p.add_argument("--worker_out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.n_reviews, args.max_length, args.n_score, args.teacher_steps = 48, 128, 16, 4
        args.arch_batch, args.arch_seq, args.arch_repeats, args.matmul_n, args.bf16_subset = 8, 32, 1, 512, 16
        args.batch_tokens_reviews = args.profile_reviews = 16
        if args.out == p.get_default("out"):
            args.out = str(ROOT / "benchmarks" / "results" / "speed_quick")
    return args


if __name__ == "__main__":
    main()
