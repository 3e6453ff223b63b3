"""What the tabs share: the app context (job registry, checkpoints root, model cache), run pickers, guarded handlers."""
from __future__ import annotations

import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gradio as gr

from ..checkpoints import RunInfo, list_runs
from ..data import DataError
from ..jobs import JobRegistry
from ..inference import predict
from ..models import ModelError, load_pair, resolve
from ..redact import redact
from . import safety

log = logging.getLogger(__name__)

KIND_NAMES = {"teacher": "teacher", "kd": "KD student", "nokd": "no-KD student"}
ARCH_CHOICES = ["arch:bert-base-uncased", "arch:distilbert-base-uncased"]
LOCAL_IMDB = ("../shared/data/imdb/train.parquet",)
EXPECTED = (ValueError, OSError, DataError, ModelError, FileExistsError, RuntimeError)


def local_imdb() -> str | None:
    """../shared/data/imdb/train.parquet relative to the working directory or to the repository, if present."""
    repo = Path(__file__).resolve().parents[2]
    for rel in LOCAL_IMDB:
        if Path(rel).is_file():
            return rel
        if (repo / rel).is_file():
            return str((repo / rel).resolve())
    return None


def find_runs(root: Path) -> list[RunInfo]:
    """Complete runs directly under root and one folder level down (e.g. checkpoints/cpu-scale/<run>), newest first."""
    return list_runs(root)  # list_runs itself looks one level down


def run_label(run: RunInfo) -> str:
    acc = (run.metrics.get("validation") or {}).get("accuracy")
    acc_text = f" · acc {acc:.3f}" if isinstance(acc, (int, float)) else ""
    return f"{run.name} · {KIND_NAMES.get(run.kind, run.kind)}{acc_text}"


@dataclass
class LoadedModel:
    name: str
    model: object
    tokenizer: object
    max_length: int = 512
    truncation: str = "head"
    head_tokens: int | None = None
    run_config: dict = field(default_factory=dict)


class ModelCache:
    """A small LRU of loaded (model, tokenizer) pairs, so the second prediction with a model is fast."""

    def __init__(self, max_items: int = 4):
        self.max_items = max_items
        self._items: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()  # one load at a time: two clicks must not load the same model twice

    def get(self, name: str) -> LoadedModel:
        name = (name or "").strip()
        if not name:
            raise ModelError("No model chosen: pick a checkpoint, or type a hub id or a local folder.")
        source = resolve(name)
        config = Path(source) / "config.json"
        key = (source, config.stat().st_mtime if config.is_file() else None)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            model, tokenizer = load_pair(source)
            model.eval()
            rc = read_json(Path(source) / "run_config.json")
            item = LoadedModel(name, model, tokenizer, int(rc.get("max_length") or 512), rc.get("truncation") or "head",
                               rc.get("head_tokens"), rc)
            predict(model, tokenizer, ["warm-up"], max_length=16)  # the first forward pass is slow: keep it untimed
            self._items[key] = item
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return item


def read_json(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class AppContext:
    """State shared by every tab and session of one app. `admin_password` (KDAPP_ADMIN_PASSWORD) locks training and
    benchmarks, and restricts the models and data the browser may name (kdapp.ui.safety)."""
    registry: JobRegistry
    root: Path
    models: ModelCache = field(default_factory=ModelCache)
    admin_password: str | None = field(default_factory=safety.admin_password, repr=False)

    @property
    def locked(self) -> bool:
        return bool(self.admin_password)

    def unlock(self, password: str | None) -> None:
        safety.check_password(self.admin_password, password)

    def model_name(self, name: str | None) -> str:
        """`name` when the browser may use it (any name without the lock); ValueError saying why otherwise."""
        return safety.check_model_name(name, self.root) if self.locked else (name or "").strip()

    def data_name(self, name: str | None, offered: list[str]) -> str:
        return safety.check_data_name(name, offered) if self.locked else (name or "").strip()

    def runs(self, kinds: tuple[str, ...] | None = None) -> list[RunInfo]:
        return [r for r in find_runs(self.root) if kinds is None or r.kind in kinds]

    def choices(self, kinds: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
        return [(run_label(r), str(r.path)) for r in self.runs(kinds)]

    def local_hint(self) -> str:
        found = [str(r.path) for r in self.runs()][:6]
        return (f"Local checkpoints: {', '.join(found)}." if found else
                f"No trained checkpoints under {self.root}/ yet: train one in the 'Train teacher' tab "
                "(try 'Quick CPU run').")


@dataclass
class Refresher:
    """How a tab refreshes its checkpoint pickers: fn(*inputs) -> updates for outputs."""
    fn: Callable
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def error_message(e: BaseException, ctx: AppContext | None = None) -> str:
    msg = redact(str(e) if isinstance(e, EXPECTED) else f"{type(e).__name__}: {e}")
    if ctx is not None and isinstance(e, ModelError) and "unreachable" in msg:
        msg = msg.split(" Use --model")[0].split(" Local models found")[0].rstrip(".") + ". " + ctx.local_hint()
    return msg


def guarded(fallback: Callable[[str], object], ctx: AppContext | None = None):
    """Any exception in the handler -> gr.Warning(message) and `fallback(message)` as its outputs; the app keeps
    serving. functools.wraps keeps the signature, so gradio still sees the parameter names and gr.Progress."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001  (the message is shown; the traceback goes to the log)
                if not isinstance(e, EXPECTED):
                    log.exception("handler %s failed", fn.__name__)
                msg = error_message(e, ctx)
                gr.Warning(msg)
                return fallback(msg)
        return wrapper
    return deco


def password_box(ctx: AppContext, prefix: str) -> gr.Textbox:
    """The admin password field of a locked app (hidden when KDAPP_ADMIN_PASSWORD is unset)."""
    return gr.Textbox("", type="password", label="Admin password", visible=ctx.locked, elem_id=f"{prefix}_password",
                      info="this public app only starts training and benchmarks for its admin", max_lines=1)


def as_float(value) -> float | None:
    """A gr.Number value as float; None when the box is empty (the setting's own default)."""
    if value is None or value == "":
        return None
    return float(value)


def as_int(value, none_if_zero: bool = True) -> int | None:
    """A gr.Number value as int; None for empty (and for 0 when 0 means 'all')."""
    if value is None or value == "":
        return None
    value = int(float(value))
    return None if none_if_zero and value == 0 else value
