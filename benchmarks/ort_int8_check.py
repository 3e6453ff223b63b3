"""ONNX Runtime vs torch on the CPU-scale teacher: reviews/s and accuracy, fp32 and dynamic int8.

Not a dependency of kdapp. From the repo root, once benchmarks/accuracy.py has made checkpoints/cpu-scale/teacher:

    pip install onnxruntime onnx onnxscript
    python benchmarks/ort_int8_check.py            # 600 reviews drawn from ../shared/data/imdb/train.parquet

Exported with torch.onnx.export(dynamo=True), optimised with ORT's BERT graph optimizer, quantized with
onnxruntime.quantization.quantize_dynamic; every path gets the same length-sorted, dynamically padded batches.
docs/speed.md has what it printed on the 2-core AVX2 dev machine: ORT int8 no faster than torch's dynamic int8.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import kdapp  # noqa: F401  (OMP_WAIT_POLICY before torch)
import numpy as np
import pandas as pd
import torch

from kdapp.encoding import encode
from kdapp.inference import length_batches, logits_from_ids, pad_batch, prepare_model
from kdapp.models import load_pair

TEACHER = "checkpoints/cpu-scale/teacher"
DATA = "../shared/data/imdb/train.parquet"


def timed(name: str, fn, ids, labels, reference=None) -> np.ndarray:
    fn(ids[:64])  # warm-up
    start = time.perf_counter()
    logits = fn(ids)
    seconds = time.perf_counter() - start
    agree = "" if reference is None else f", argmax agrees with torch fp32 on {(logits.argmax(1) == reference).mean():.1%}"
    print(f"{name:>22}: {len(ids) / seconds:5.1f} reviews/s, accuracy {(logits.argmax(1) == labels).mean():.2%}{agree}",
          flush=True)
    return logits


def ort_runner(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(ids):
        out = np.zeros((len(ids), 2), np.float32)
        for batch in length_batches([len(x) for x in ids], 64):
            feed = {k: v.numpy() for k, v in pad_batch([ids[i] for i in batch], 0, "cpu").items()}
            out[batch] = session.run(None, feed)[0]
        return out
    return run


def main() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    model, tokenizer = load_pair(TEACHER)
    model.eval()
    rows = pd.read_parquet(DATA).sample(600, random_state=0)
    labels = rows["label"].to_numpy()
    ids = encode(tokenizer, rows["text"].tolist(), 256, "head", None)
    threads = torch.get_num_threads()

    fp32 = timed("torch fp32", lambda x: logits_from_ids(model, x, 0, 64), ids, labels)
    int8 = prepare_model(model, "int8", "cpu")
    timed("torch int8", lambda x: logits_from_ids(int8, x, 0, 64), ids, labels, fp32.argmax(1))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
        torch.onnx.export(model, (), str(work / "fp32.onnx"), kwargs=dict(pad_batch(ids[:4], 0, "cpu")),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_shapes=dynamic, dynamo=True)
        hidden = model.config.hidden_size
        optimize_model(str(work / "fp32.onnx"), model_type="bert", num_heads=model.config.num_attention_heads,
                       hidden_size=hidden).save_model_to_file(str(work / "opt.onnx"))
        for name in ("fp32", "opt"):
            quantize_dynamic(str(work / f"{name}.onnx"), str(work / f"{name}_int8.onnx"), weight_type=QuantType.QInt8)
        for name in ("fp32", "opt", "fp32_int8", "opt_int8"):
            timed(f"onnxruntime {name}", ort_runner(work / f"{name}.onnx", threads), ids, labels, fp32.argmax(1))


if __name__ == "__main__":
    main()
