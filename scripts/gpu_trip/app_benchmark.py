"""Press the app's Run benchmark button on this machine: launch the app, call the button's own event through the
app's API (api_name "benchmark", what the browser calls on a click), and check that every asked precision came back
as a column of the table. On a GPU this is the check that the Benchmark tab offers fp16 / int4 and that bitsandbytes
int8 / int4 run from the app; the app refuses a precision it does not offer (Gradio checks the choices), so int4 on a
CPU fails here, as it should.

    python scripts/gpu_trip/app_benchmark.py --device cuda --precision fp32 fp16 int8 int4 --out OUT
    python scripts/gpu_trip/app_benchmark.py --device cpu --precision fp32 int8     # the same on a CPU
"""
from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

import kdapp  # noqa: F401  (first: it sets OMP_WAIT_POLICY before torch loads libgomp)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["arch:distilbert-base-uncased"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", nargs="+", default=["fp32", "fp16", "int8", "int4"])
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 100])
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", help="also write the table to OUT.md")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    from gradio_client import Client

    from kdapp.ui import build_app, launch_kwargs, queue_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_app()
    _, url, _ = queue_app(demo).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                                       quiet=True, **launch_kwargs())
    start = time.perf_counter()
    try:
        client = Client(url, verbose=False)
        # the Benchmark tab's inputs, in the order of its click event: models, batch sizes, sequence length, device,
        # precisions, inputs, reviews per pass, timed passes, password, [CLS]-only
        table, _chart = client.predict(args.models, args.batch_sizes, args.max_length, args.device, args.precision,
                                       "random tokens", 100, args.repeats, "", False, api_name="/benchmark")
    except Exception as e:  # noqa: BLE001  (the app's refusal arrives as the client's error)
        table = f"the app refused the call: {e}"
    finally:
        demo.close()
    seconds = time.perf_counter() - start
    refused = table.startswith(("⚠️", "the app refused"))  # the tab's own message, or Gradio's check of choices
    missing = [p for p in args.precision if f"({p})" not in table] if len(args.precision) > 1 and not refused else []
    ok = not refused and not missing
    verdict = (f"every precision asked ({', '.join(args.precision)}) came back as a column" if ok
               else "FAILED: " + (f"no column for {', '.join(missing)}" if missing else table.splitlines()[0]))
    lines = [f"The app's Benchmark button, called through its API on {args.device} ({seconds:.1f} s): {verdict}.",
             "", table]
    print("\n".join(lines))
    if args.out:
        out = Path(args.out).with_suffix(".md")
        out.parent.mkdir(parents=True, exist_ok=True)
        command = " ".join(["python scripts/gpu_trip/app_benchmark.py", *sys.argv[1:]])
        out.write_text(f"# The app's Benchmark button\n\n`{command}`\n\n" + "\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
