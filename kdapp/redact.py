"""Keep secrets (W&B key, Hugging Face tokens, the app's admin password) out of messages, logs and the UI."""
from __future__ import annotations

import os
import re

SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_TOKEN", "KDAPP_ADMIN_PASSWORD")
# hub tokens (hf_...), and key=value / Bearer forms that libraries sometimes echo in errors
_PATTERNS = [re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
             re.compile(r"(?i)(bearer\s+|api[_-]?key\s*[=:]\s*|token\s*[=:]\s*)[A-Za-z0-9._\-]{16,}")]
MASK = "***"


def redact(text: str) -> str:
    """`text` with the values of the secret environment variables and token-shaped strings replaced by ***."""
    if not text:
        return text
    for name in SECRET_ENV:
        value = os.environ.get(name, "")
        if len(value) >= 4:  # shorter values would mask ordinary words
            text = text.replace(value, MASK)
    text = _PATTERNS[0].sub(MASK, text)
    return _PATTERNS[1].sub(lambda m: m.group(1) + MASK, text)
