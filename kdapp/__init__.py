"""kdapp: fine-tune a BERT teacher on IMDb, distil it into a smaller student, and measure what distillation buys."""
import os

# Before torch is imported: on a small, shared CPU the default OpenMP spin-wait costs 8-16 ms per parallel op
# (STACK_NOTES 0). PASSIVE threads sleep instead of spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .config import FROM_TEACHER, RunConfig  # noqa: E402
from .checkpoints import RunInfo, list_runs, load_run_info  # noqa: E402
from .data import DataError, load_splits  # noqa: E402
from .distill import DistillationTrainer, distillation_loss, hidden_state_loss  # noqa: E402
from .evaluation import evaluate_checkpoint, score  # noqa: E402
from .inference import predict, predict_logits, prepare_model  # noqa: E402
from .metrics import classification_metrics, fit_temperature  # noqa: E402
from .models import ModelError, load_model, load_pair, load_tokenizer, student_from_teacher  # noqa: E402
from .train import RunResult, distill_student, train_teacher  # noqa: E402

__version__ = "0.1.0"
__all__ = ["RunConfig", "FROM_TEACHER", "RunInfo", "list_runs", "load_run_info", "DataError", "load_splits",
           "DistillationTrainer", "distillation_loss", "hidden_state_loss", "evaluate_checkpoint", "score", "predict",
           "predict_logits", "prepare_model", "classification_metrics", "fit_temperature", "ModelError", "load_model",
           "load_pair", "load_tokenizer", "student_from_teacher", "RunResult", "distill_student", "train_teacher"]
