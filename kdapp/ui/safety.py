"""Public-Space safety: the admin password lock, which names the browser may use, upload limits and queue limits.

Environment: KDAPP_ADMIN_PASSWORD (unset = no lock, e.g. locally), KDAPP_MAX_UPLOAD_MB (default 50),
KDAPP_QUEUE_SIZE (requests waiting at most, default 64), KDAPP_CONCURRENCY (events run at once, default 2).
"""
from __future__ import annotations

import hmac
import os
from pathlib import Path

from ..data import FILE_FORMATS, HUB_DATASETS
from ..hub import looks_like_hub_id

ADMIN_ENV, UPLOAD_ENV, QUEUE_ENV, CONCURRENCY_ENV = ("KDAPP_ADMIN_PASSWORD", "KDAPP_MAX_UPLOAD_MB", "KDAPP_QUEUE_SIZE",
                                                     "KDAPP_CONCURRENCY")
MODEL_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
UPLOAD_TYPES = tuple(FILE_FORMATS)  # .parquet .csv .tsv .jsonl .json


class Locked(PermissionError):
    """Training and benchmarks need the admin password on this app."""


def admin_password() -> str | None:
    return os.environ.get(ADMIN_ENV) or None


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


def max_upload_mb() -> float:
    return _env_number(UPLOAD_ENV, 50)


def check_password(expected: str | None, given: str | None) -> None:
    """No lock when `expected` is unset; otherwise a constant-time comparison, and Locked when it differs."""
    if not expected:
        return
    if not hmac.compare_digest((given or "").encode(), expected.encode()):
        raise Locked("Locked: starting training or a benchmark on this Space needs the admin password "
                     f"({ADMIN_ENV}). Type it into the 'Admin password' box. Compare and Results stay open to all.")


def check_model_name(name: str, root: Path) -> str:
    """With the lock on: a model is 'minilm', an arch: entry, a hub id, or a folder under the checkpoints root;
    any other server path (absolute, '..', an existing folder elsewhere) is refused."""
    name = (name or "").strip()
    if not name or name in MODEL_ALIASES or name.startswith("arch:"):
        return name
    path = Path(name).expanduser()
    if path.is_absolute() or ".." in path.parts or name.startswith(("~", ".")) or path.exists():
        if path.exists() and _inside(path, root):
            return name
        raise ValueError(f"{name!r} is refused on this public app: a model must be a checkpoint under {root}/ "
                         "(pick one from the list), a hub id such as distilbert-base-uncased, or 'minilm'. Other "
                         "server paths, absolute or with '..', cannot be named from the browser.")
    if looks_like_hub_id(name):
        return name
    raise ValueError(f"{name!r} is not a hub id (name or org/name), a checkpoint under {root}/, or 'minilm'.")


def check_data_name(name: str, offered: list[str]) -> str:
    """With the lock on: the data sources the app offers, or a hub dataset id; upload a file for anything else."""
    name = (name or "").strip()
    if name in offered or name in HUB_DATASETS or (looks_like_hub_id(name) and not Path(name).exists()
                                                    and not Path(name).suffix):
        return name
    raise ValueError(f"Data {name!r} is refused on this public app: choose one of {offered} or upload a "
                     ".parquet/.csv/.jsonl file with the upload box.")


def check_upload(path: str | None, max_mb: float | None = None) -> str | None:
    """An uploaded data file (already in gradio's temporary folder): its type and size, in MB, are checked."""
    if not path:
        return None
    p, max_mb = Path(path), max_mb if max_mb is not None else max_upload_mb()
    if p.suffix.lower() not in UPLOAD_TYPES:
        raise ValueError(f"Upload {p.name!r} refused: expected one of {', '.join(UPLOAD_TYPES)} with columns "
                         "text,label.")
    size_mb = p.stat().st_size / 1e6
    if size_mb > max_mb:
        raise ValueError(f"Upload {p.name!r} is {size_mb:.1f} MB; the limit is {max_mb:g} MB ({UPLOAD_ENV}).")
    return str(p)


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(Path(root).resolve())  # resolve(): symlinks and '..' cannot escape
    except OSError:
        return False


def queue_app(demo):
    """demo.queue with limits: at most KDAPP_QUEUE_SIZE requests wait (more are refused with 'queue is full'),
    KDAPP_CONCURRENCY run at once; benchmark and disagreement scoring have their own limit of 1."""
    return demo.queue(max_size=int(_env_number(QUEUE_ENV, 64)),
                      default_concurrency_limit=int(_env_number(CONCURRENCY_ENV, 2)))


def launch_kwargs() -> dict:
    """Arguments for demo.launch: gradio refuses larger uploads itself, before any kdapp code runs."""
    return {"max_file_size": f"{max_upload_mb():g}mb"}
