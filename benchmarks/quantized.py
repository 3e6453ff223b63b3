"""A checkpoint's accuracy, size and speed at each precision, side by side on one machine.

CPU: fp32, bf16 and kdapp's dynamic int8. GPU: fp32, fp16, bf16 and bitsandbytes int8 / int4 (`pip install
bitsandbytes`). Scores the first N reviews of the seed's validation split of the IMDb train file at each precision
with kdapp's inference path (what `python -m kdapp evaluate --precision ...` runs), then times each precision on
those reviews with `bench` (batch 1 and 100, kdapp's [CLS]-only path), and writes a JSON and a markdown report.

    python benchmarks/quantized.py --model checkpoints/cpu-scale/STUDENT --device cpu --precision fp32 bf16 int8 --out OUT
    python benchmarks/quantized.py --model STUDENT --device cuda --precision fp32 fp16 bf16 int8 int4 --out OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import kdapp  # noqa: F401  (thread and allocator settings before torch loads)
import torch

from kdapp.benchmark import markdown_table, precision_table, run_benchmark
from kdapp.data import read_source, seed_split
from kdapp.evaluation import evaluate_checkpoint

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".." / "shared" / "data" / "imdb" / "train.parquet"


def validation_file(data: str, n: int, folder: Path) -> Path:
    """The first n reviews of the seed's validation split, as a parquet file that `evaluate` scores whole."""
    _, validation = seed_split(read_source(data)["train"])
    path = folder / "validation.parquet"
    validation.select(range(min(n, len(validation)))).to_parquet(str(path))
    return path


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = validation_file(args.data, args.n_eval, Path(tmp))
        scores = []
        for precision in args.precision:
            print(f"scoring {args.model} at {precision} on {args.device}", flush=True)
            scores.append(evaluate_checkpoint(args.model, str(rows), max_length=args.max_length,
                                              batch_size=args.batch_size, precision=precision, device=args.device))
        speed = run_benchmark([args.model], args.batch_sizes, args.max_length, args.device, args.precision,
                              data=str(rows), n_texts=args.n_texts, repeats=args.repeats, cls_only=True)
    where = f"{args.data} (the seed's validation split, first {args.n_eval})"
    for s in scores:
        s["data"] = where
    speed["config"]["data"] = where
    accuracy = precision_table(scores)
    timing = markdown_table(speed)
    device_name = speed["env"]["device_name"]
    header = (f"# {args.model} at each precision on {device_name}\n\n"
              f"Command: `python benchmarks/quantized.py {' '.join(args.argv)}`; "
              f"torch {torch.__version__}; {round(time.perf_counter() - started)} s.\n")
    report = f"{header}\n## Accuracy and size\n\n{accuracy}\n\n## Speed (bench, kdapp's path)\n\n{timing}\n"
    print(report)
    (out / "quantized.md").write_text(report)
    (out / "quantized.json").write_text(json.dumps({"scores": scores, "bench": speed, "device": device_name,
                                                    "argv": args.argv}, indent=2))
    print(f"wrote {out / 'quantized.md'} and {out / 'quantized.json'}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="checkpoint folder (or hub id)")
    p.add_argument("--data", default=str(DATA), help="IMDb train parquet; its seed validation split is scored")
    p.add_argument("--n_eval", type=int, default=2000, help="validation reviews to score and time on")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16", "int8"],
                   choices=["fp32", "bf16", "fp16", "int8", "int4"], help="the first is the baseline")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=64, help="scoring batch size")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 100], help="bench batch sizes")
    p.add_argument("--n_texts", type=int, default=200, help="reviews per timed bench pass")
    p.add_argument("--repeats", type=int, default=5, help="timed bench passes")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


if __name__ == "__main__":
    main()
