"""Reviews -> token ids: HTML line breaks removed, head or head+tail truncation, no padding (done per batch)."""
from __future__ import annotations

import re

import numpy as np
from datasets import Dataset

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
MAX_REVIEW_CHARS = 100_000  # a 1 MB paste is cut here before tokenizing (IMDb's longest review is ~14k chars)


def clean_text(text: str) -> str:
    """IMDb reviews are full of '<br /><br />': each would cost 4+ tokens of noise."""
    return _BR.sub(" ", text[:MAX_REVIEW_CHARS]).strip()


def body_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Each review's token ids, whole: cleaned, no special tokens, no truncation."""
    return tokenizer([clean_text(t) for t in texts], add_special_tokens=False, truncation=False, verbose=False,
                     return_attention_mask=False, return_token_type_ids=False)["input_ids"]


def encode(tokenizer, texts: list[str], max_length: int, truncation: str = "head",
           head_tokens: int | None = None) -> list[list[int]]:
    """Token ids with special tokens, at most `max_length` long.

    head: the first max_length-2 tokens. head_tail: the first `head_tokens` and the last
    (max_length - 2 - head_tokens), as in Sun et al. 2019 (128 + 382 at 512).
    """
    if truncation == "head":
        return tokenizer([clean_text(t) for t in texts], truncation=True, max_length=max_length,
                         return_token_type_ids=False, return_attention_mask=False)["input_ids"]
    first, last = _specials(tokenizer)
    budget = max_length - len(first) - len(last)
    head = budget * 128 // 510 if head_tokens is None else min(head_tokens, budget)
    tail = budget - head
    out = []
    for ids in body_ids(tokenizer, texts):
        if len(ids) > budget:
            ids = ids[:head] + (ids[-tail:] if tail else [])
        out.append(first + ids + last)
    return out


def _specials(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a sequence starts and ends with ([CLS] / [SEP], else BOS / EOS; [] where the tokenizer has none)."""
    first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    return [first] if first is not None else [], [last] if last is not None else []


def review_windows(tokenizer, texts: list[str], max_length: int) -> tuple[list[list[int]], np.ndarray]:
    """Every review read whole: windows of max_length tokens (special tokens included) covering all of it.

    A review that fits is one window, the same ids as head truncation. A longer one gets the fewest windows, spread
    evenly from its first token to its last, with consecutive windows overlapping by at least half (so every token is
    read with some context on both sides in one of them). Returns (windows, owner): owner[k] is the index in `texts`
    of window k's review."""
    first, last = _specials(tokenizer)
    budget = max_length - len(first) - len(last)
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for review tokens")
    stride = budget // 2
    windows, owner = [], []
    for i, ids in enumerate(body_ids(tokenizer, texts)):
        n = 1 if len(ids) <= budget else -(-(len(ids) - budget) // stride) + 1
        for start in np.linspace(0, max(len(ids) - budget, 0), n).round().astype(int):
            windows.append(first + ids[start: start + budget] + last)
            owner.append(i)
    return windows, np.asarray(owner, dtype=np.int64)


def window_views(tokenizer, texts: list[str], max_length: int, per_review: int) -> tuple[list[list[int]], list[int]]:
    """Extra views of long reviews: up to `per_review` further max_length windows of each text (after the first).

    Used as augmentation rows: KD-only, labelled by the teacher (with alpha = 1, no teacher: by their review's label);
    windows shorter than a quarter of the budget are skipped (too little text to judge). Returns (views, owner):
    owner[k] is the index in `texts` of view k's review."""
    first, last = tokenizer.cls_token_id, tokenizer.sep_token_id
    budget = max_length - 2
    views, owner = [], []
    for i, ids in enumerate(body_ids(tokenizer, texts)):
        chunks = [ids[s: s + budget] for s in range(budget, len(ids), budget)]
        kept = [[first] + c + [last] for c in chunks[:per_review] if len(c) >= budget // 4]
        views += kept
        owner += [i] * len(kept)
    return views, owner


def masked_views(ids: list[list[int]], mask_id: int, copies: int, prob: float, seed: int = 0,
                 keep: frozenset[int] = frozenset()) -> list[list[int]]:
    """`copies` perturbed copies of every sequence: each token not in `keep` (the special tokens) becomes `mask_id`
    with probability `prob` (Tang et al. 2019's masking augmentation). Seeded: the same inputs give the same views,
    so a logit cache keyed by token ids stays valid across runs."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(copies):
        for seq in ids:
            hit = rng.random(len(seq)) < prob
            views.append([mask_id if h and t not in keep else t for t, h in zip(seq, hit)])
    return views


def tokenize_dataset(ds: Dataset, tokenizer, max_length: int, truncation: str = "head",
                     head_tokens: int | None = None) -> Dataset:
    """Adds input_ids, attention_mask and the index column `idx` (the logit cache's key); keeps `label`."""
    def fn(batch, indices):
        ids = encode(tokenizer, batch["text"], max_length, truncation, head_tokens)
        return {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "idx": indices}

    keep = [c for c in ds.column_names if c == "label"]
    return ds.map(fn, batched=True, with_indices=True, remove_columns=[c for c in ds.column_names if c not in keep],
                  desc="Tokenizing")
