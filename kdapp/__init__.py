"""kdapp: fine-tune a BERT teacher on IMDb, distil it into a smaller student, and measure what distillation buys."""
import importlib
import os

# Before torch is imported: on a small, shared CPU the default OpenMP spin-wait costs 8-16 ms per parallel op
# (STACK_NOTES 0). PASSIVE threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

# Public API, imported on first use so that `python -m kdapp --help` does not pay for torch and transformers.
_API = {
    "RunConfig": "config", "FROM_TEACHER": "config",
    "RunInfo": "checkpoints", "list_runs": "checkpoints", "load_run_info": "checkpoints",
    "DataError": "data", "load_splits": "data",
    "DistillationTrainer": "distill", "distillation_loss": "distill", "hidden_state_loss": "distill",
    "evaluate_checkpoint": "evaluation", "score": "evaluation",
    "predict": "inference", "predict_logits": "inference", "prepare_model": "inference",
    "classification_metrics": "metrics", "fit_temperature": "metrics",
    "ModelError": "models", "load_model": "models", "load_pair": "models", "load_tokenizer": "models",
    "student_from_teacher": "models",
    "RunResult": "train", "distill_student": "train", "train_teacher": "train",
    "run_benchmark": "benchmark", "markdown_table": "benchmark",
    "run_sweep": "sweep", "calibrate_checkpoint": "calibration",
}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'kdapp' has no attribute {name!r}")
