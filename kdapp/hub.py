"""Is the Hugging Face hub reachable? Asked once per process, so an offline machine fails fast, not after 23 s of retries."""
from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


def offline_env() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the hub's host resolves and accepts a TCP connection (False at once under HF_HUB_OFFLINE=1)."""
    if offline_env():
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def looks_like_hub_id(name: str) -> bool:
    """'bert-base-uncased' or 'org/name'; not an absolute or relative path."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    return name.count("/") <= 1 and all(part and not part.startswith(".") for part in name.split("/"))
