"""Weights & Biases, never required: online with a key, offline files without one, never a prompt."""
from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path

log = logging.getLogger(__name__)


def _has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(Path.home() / ".netrc").authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def report_to(choice: str) -> list[str]:
    """TrainingArguments.report_to for 'none' or 'wandb'; sets W&B to offline mode when no key is configured."""
    if choice != "wandb":
        return []
    try:
        import wandb  # noqa: F401
    except ImportError:
        log.warning("report_to=wandb but wandb is not installed: not tracking this run")
        return []
    if not _has_key() and not os.environ.get("WANDB_MODE"):
        os.environ["WANDB_MODE"] = "offline"  # files under ./wandb, upload later with `wandb sync`
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_PROJECT", "kdapp")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    return ["wandb"]


def finish_run(metrics: dict | None = None, labels=None, preds=None) -> None:
    """Log the final metrics and confusion matrix to the active W&B run and close it (one W&B run per kdapp run)."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    try:
        if metrics:
            wandb.run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        if labels is not None and preds is not None:
            wandb.log({"confusion_matrix": wandb.plot.confusion_matrix(
                y_true=list(map(int, labels)), preds=list(map(int, preds)), class_names=["negative", "positive"])})
    finally:
        wandb.finish()
