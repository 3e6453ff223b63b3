"""Command line: python -m kdapp {teacher,distill,evaluate,predict,bench,sweep,calibrate,int8-calibrate} ...

teacher/distill flags are RunConfig's fields (spelled like TrainingArguments'); the app builds the same RunConfig.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import typing
from pathlib import Path

import kdapp  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
from kdapp.config import RunConfig, cli_fields

EPILOG = {
    "teacher": "example: python -m kdapp teacher --model minilm --data ../shared/data/imdb/train.parquet "
               "--max_train_samples 2000 --max_length 256 --learning_rate 1e-4 --warmup_steps 0.1 --num_train_epochs 2",
    "distill": "example: python -m kdapp distill --teacher checkpoints/teacher --student from-teacher --student_layers 3 "
               "--data ../shared/data/imdb/train.parquet --max_train_samples 2000 --max_length 256",
}


def _str2bool(v: str) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' except for None: config flags default to None (so --config values survive) and name
    RunConfig's own default in their help."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _add_config_args(parser: argparse.ArgumentParser, kind: str) -> None:
    hints = typing.get_type_hints(RunConfig)
    parser.add_argument("--config", help="JSON file of RunConfig fields (flags given here override it)")
    for f in cli_fields(kind):
        tp = hints[f.name]
        args = typing.get_args(tp)
        base = next((a for a in args if a is not type(None)), tp) if args else tp
        default = f"(default: {f.default})"
        if base is bool:
            parser.add_argument(f"--{f.name}", type=_str2bool, nargs="?", const=True, default=None,
                                metavar="true|false", help=f"{f.metadata['help']} {default}")
        else:
            parser.add_argument(f"--{f.name}", type=base, default=None, help=f"{f.metadata['help']} {default}")


def _config_from_args(kind: str, ns: argparse.Namespace) -> RunConfig:
    values = json.loads(Path(ns.config).read_text()) if ns.config else {}
    values.update({f.name: getattr(ns, f.name) for f in cli_fields(kind) if getattr(ns, f.name) is not None})
    values["kind"] = kind
    return RunConfig.from_dict(values)


WINDOWS_HELP = ("read each review whole: max_length windows, half overlapping, their logits averaged (slower on "
                "long reviews); unset: the run's truncation (head or head+tail)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kdapp", description=__doc__.split("\n")[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="less logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for kind, help_ in (("teacher", "fine-tune a teacher (cross-entropy, Trainer)"),
                        ("distill", "distil a teacher into a student (alpha*CE + (1-alpha)*T^2*KL)")):
        p = sub.add_parser(kind, help=help_, description=help_, epilog=EPILOG[kind],
                           formatter_class=_DefaultsHelp)
        _add_config_args(p, kind)

    p = sub.add_parser("sweep", help="alpha/T grid of distillation runs -> table (+ sweep.json)",
                       description="One distill run per (alpha, T) with the other distill flags fixed; the teacher's "
                                   "logits are computed once and shared.",
                       formatter_class=_DefaultsHelp)
    _add_config_args(p, "distill")
    p.add_argument("--alphas", type=float, nargs="+", default=[0.1, 0.5, 0.9, 1.0], help="alpha values")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="T values")
    p.add_argument("--sweep_dir", help="where the grid's runs and sweep.json go (default checkpoints/sweep-<time>)")
    p.add_argument("--keep_checkpoints", action="store_true", help="keep every grid point's weights")

    p = sub.add_parser("calibrate", help="temperature scaling on the validation split: ECE before/after")
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--data", required=True, help="the run's data (its seed-42 validation split is used)")
    p.add_argument("--max_eval_samples", type=int, help="use the first N validation rows")
    p.add_argument("--max_length", type=int, help="default: the run's max_length")
    p.add_argument("--no_save", action="store_true", help="do not write <model>/calibration.json")

    p = sub.add_parser("int8-calibrate", help="record activation maxima so that int8 smooths the feed-forward outputs",
                       description="Write <model>/int8_calibration.safetensors from the first training reviews of "
                                   "--data (seed-42 split): evaluate, predict, bench and the app then run int8 with "
                                   "the feed-forward output layers smoothed (SmoothQuant). Runs trained by kdapp "
                                   "carry one already.", formatter_class=_DefaultsHelp)
    p.add_argument("--model", required=True, help="checkpoint folder")
    p.add_argument("--data", required=True, help="reviews to calibrate on (the first --rows of its training split)")
    p.add_argument("--rows", type=int, default=256, help="training reviews to run")
    p.add_argument("--max_length", type=int, help="default: the run's max_length, else 512")

    p = sub.add_parser("evaluate", help="score a model on labelled reviews (accuracy, F1, ECE, ...) -> JSON")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--data", default="imdb", help="a file (every row is scored), an aclImdb folder or 'imdb' (test split)")
    p.add_argument("--max_eval_samples", type=int, help="score only the first N rows")
    p.add_argument("--max_length", type=int, help="default: the run's max_length, else 512")
    p.add_argument("--per_device_eval_batch_size", type=int, default=64, help="batch size")
    p.add_argument("--precision", default=["fp32"], nargs="+", choices=["fp32", "bf16", "fp16", "int8", "int4"],
                   help="inference precision (CPU: fp32, bf16, int8; GPU: fp32, fp16, bf16, int8, int4); several, "
                        "e.g. fp32 int8, print accuracy, size and speed side by side (JSON: {'results': [...]})")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument("--windows", action="store_true", help=WINDOWS_HELP)
    p.add_argument("--json", help="write the results to this JSON file")

    p = sub.add_parser("bench", help="latency, throughput, size and memory of models -> the seed's table + JSON",
                       description="Time models (hub id, checkpoint folder, or arch:bert-base-uncased / "
                                   "arch:distilbert-base-uncased built from their configs with random weights).",
                       epilog="example: python -m kdapp bench --models arch:bert-base-uncased "
                              "arch:distilbert-base-uncased --batch_sizes 1 100 --max_length 128 --json bench.json",
                       formatter_class=_DefaultsHelp)
    p.add_argument("--models", nargs="+", required=True, metavar="MODEL",
                   help="hub ids, checkpoint folders or arch:NAME; the first is the Delta column's baseline")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 100], help="batch sizes to time")
    p.add_argument("--max_length", type=int, default=128,
                   help="tokens per row: the fixed length of random rows, or the truncation of real reviews")
    p.add_argument("--device", choices=["cpu", "cuda"], help="unset: cuda if available, else cpu")
    p.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16", "int8", "int4"],
                   help="precisions to time (CPU: fp32, bf16, int8; GPU: fp32, fp16, bf16, int8, int4)")
    p.add_argument("--data", help="time on real reviews from this file/folder; unset: random rows of max_length")
    p.add_argument("--n_texts", type=int, default=100, help="rows per timed pass (at least the largest batch size)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up batches")
    p.add_argument("--num_threads", type=int, help="torch CPU threads; unset: torch's choice (all cores)")
    p.add_argument("--cls_only", action="store_true",
                   help="time kdapp's inference path, the last layer at [CLS] only (what evaluate, predict and the "
                        "app run); unset: the models' full forward, comparable with the seed's table")
    p.add_argument("--json", help="write rows and environment to this JSON file")

    p = sub.add_parser("predict", help="classify reviews given on the command line")
    p.add_argument("--model", required=True, help="checkpoint folder or hub id")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16", "int8", "int4"])
    p.add_argument("--max_length", type=int, help="default: the run's max_length, else 512")
    p.add_argument("--windows", action="store_true", help=WINDOWS_HELP)
    p.add_argument("texts", nargs="+", metavar="TEXT", help="review text(s); '-' reads one review per line from stdin")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if ns.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from kdapp.data import DataError
    from kdapp.models import ModelError

    try:
        return COMMANDS[ns.command](ns)
    except (DataError, ModelError, ValueError, FileExistsError, FileNotFoundError) as e:
        from kdapp.redact import redact

        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _progress_bar(desc: str):
    """A tqdm bar fed by kdapp's progress(done, total) callbacks."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="batch")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()


def cmd_train(ns) -> int:
    from kdapp.train import distill_student, train_teacher

    cfg = _config_from_args(ns.command, ns)
    result = (train_teacher if cfg.kind == "teacher" else distill_student)(cfg)
    _close_process_group()
    print(result.message)
    if result.status == "done" and "validation" in result.metrics:
        v = result.metrics["validation"]
        print(f"validation: accuracy {v['accuracy']:.4f}  f1_weighted {v['f1_weighted']:.4f}  ece {v['ece']:.4f}  "
              f"(n={v['n']}); train {result.metrics['train_runtime_s']:.0f} s -> {result.output_dir}")
    return 0 if result.status == "done" else 1


def _close_process_group() -> None:
    """Under torchrun: end the process group the run's Trainer opened, once no rank needs it. Left to interpreter
    exit, gloo's worker threads can abort a rank ('terminate called without an active exception', SIGABRT) after a
    run that finished well."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2))
        print(f"wrote {path}")


def cmd_evaluate(ns) -> int:
    from kdapp.evaluation import evaluate_checkpoint

    if len(ns.precision) > 1:
        return _evaluate_precisions(ns)
    ns.precision = ns.precision[0]
    with _progress_bar("scoring") as progress:
        res = evaluate_checkpoint(ns.model, ns.data, ns.max_eval_samples, ns.max_length,
                                  ns.per_device_eval_batch_size, ns.precision, ns.device, progress=progress,
                                  windows=ns.windows)
    summary = {k: res[k] for k in ("model", "precision", "reading", "n", "accuracy", "f1_weighted", "ece", "params",
                                   "size_mb", "samples_per_second")}
    print(json.dumps(summary, indent=2))
    _write_json(ns.json, res)
    return 0


def _evaluate_precisions(ns) -> int:
    """evaluate --precision fp32 int8 ...: one scoring per precision, accuracy and size side by side."""
    from kdapp.benchmark import precision_table
    from kdapp.evaluation import evaluate_checkpoint

    results = []
    for precision in dict.fromkeys(ns.precision):
        with _progress_bar(f"scoring ({precision})") as progress:
            results.append(evaluate_checkpoint(ns.model, ns.data, ns.max_eval_samples, ns.max_length,
                                               ns.per_device_eval_batch_size, precision, ns.device, progress=progress,
                                               windows=ns.windows))
    print(precision_table(results))
    _write_json(ns.json, {"model": ns.model, "data": ns.data, "results": results})
    return 0


def cmd_bench(ns) -> int:
    from kdapp.benchmark import markdown_table, run_benchmark
    from kdapp.inference import default_device

    result = run_benchmark(ns.models, ns.batch_sizes, ns.max_length, ns.device or default_device(), ns.precision,
                           data=ns.data, n_texts=ns.n_texts, repeats=ns.repeats, warmup=ns.warmup,
                           num_threads=ns.num_threads, cls_only=ns.cls_only)
    print(markdown_table(result))
    _write_json(ns.json, result)
    return 0


def cmd_predict(ns) -> int:
    from kdapp.encoding import MAX_REVIEW_CHARS
    from kdapp.evaluation import saved_run_config
    from kdapp.inference import predict, prepare_model
    from kdapp.models import load_pair

    texts = [line for line in sys.stdin.read().splitlines() if line.strip()] if ns.texts == ["-"] else ns.texts
    empty = [i + 1 for i, t in enumerate(texts) if not t.strip()]
    if empty or not texts:
        raise ValueError(f"review {', '.join(map(str, empty)) or 1} is empty: pass the review text, e.g. "
                         "python -m kdapp predict --model DIR \"a wonderful film\"")
    for i, t in enumerate(texts):
        if len(t) > MAX_REVIEW_CHARS:
            print(f"note: review {i + 1} has {len(t):,} characters; only the first {MAX_REVIEW_CHARS:,} are read",
                  file=sys.stderr)
    model, tokenizer = load_pair(ns.model)
    model = prepare_model(model, ns.precision)
    rc = saved_run_config(ns.model)  # read the reviews as the model was trained to read them
    probs = predict(model, tokenizer, texts, max_length=ns.max_length or rc.get("max_length") or 512,
                    truncation=rc.get("truncation") or "head", head_tokens=rc.get("head_tokens"), windows=ns.windows)
    for text, p in zip(texts, probs):
        short = text if len(text) <= 60 else text[:57] + "..."
        print(f"{p['label']:<8} {p['score']:.3f}  {short}")
    return 0


def cmd_sweep(ns) -> int:
    from kdapp.sweep import markdown, run_sweep

    ns.command = "distill"
    base = _config_from_args("distill", ns)
    rows = run_sweep(base, ns.alphas, ns.temperatures, ns.sweep_dir, ns.keep_checkpoints)
    print(markdown(rows))
    return 0


def cmd_calibrate(ns) -> int:
    from kdapp.calibration import calibrate_checkpoint

    res = calibrate_checkpoint(ns.model, ns.data, ns.max_eval_samples, ns.max_length, save=not ns.no_save)
    b, a = res["before"], res["after"]
    print(f"temperature {res['temperature']:.3f} (fitted on {res['n_fit']} validation rows; "
          f"reported on the other {res['n_heldout']})")
    print(f"ECE {b['ece']:.4f} -> {a['ece']:.4f}   NLL {b['nll']:.4f} -> {a['nll']:.4f}   accuracy {b['accuracy']:.4f} (unchanged)")
    return 0


def cmd_int8_calibrate(ns) -> int:
    from kdapp.quantize import calibrate_checkpoint

    res = calibrate_checkpoint(ns.model, ns.data, ns.rows, ns.max_length)
    print(f"wrote {res['path']}: {res['layers']} feed-forward output layers, {res['rows']} reviews at max_length "
          f"{res['max_length']}")
    return 0


COMMANDS = {"teacher": cmd_train, "distill": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "sweep": cmd_sweep, "calibrate": cmd_calibrate, "int8-calibrate": cmd_int8_calibrate,
            "bench": cmd_bench}

if __name__ == "__main__":
    sys.exit(main())
