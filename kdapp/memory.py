"""Keep freed memory in the process while a long CPU job runs, so that its large tensors reuse it.

glibc's malloc serves every block over its mmap threshold (128 KiB to 32 MiB, adjusted as the process runs) with a
fresh mmap and hands it back to the kernel when it is freed. A training step frees and re-allocates the same large
tensors every step: the attention scores and probabilities (16 x 12 x 256 x 256), the feed-forward activations, the
word-embedding gradient (30,522 x 384 floats, 47 MB). Each fresh mapping costs a page fault and a zeroed page per
4 KiB the first time it is written, which on a virtual machine can take longer than the arithmetic on the block.
PyTorch's CPU performance guides answer this with jemalloc or tcmalloc preloaded; the same effect, within glibc and
without a preload, is two `mallopt` settings: no mmap for large blocks (`M_MMAP_MAX` 0) and no trimming of the heap's
free top (`M_TRIM_THRESHOLD` 1 GiB), so freed blocks stay in the heap for the next step.

`keep_freed_memory()` holds them while a training run or a long inference job runs (kdapp/train.py,
kdapp/inference.py), then puts glibc's default values back and returns the free memory to the kernel
(`malloc_trim`), so a long-lived app does not keep a run's peak (the mmap threshold stays where it was: glibc stops
adapting it once mallopt has been called). Nested and concurrent jobs share one setting (a count of holders).
Elsewhere (not Linux with glibc: macOS, Windows, musl) and with KDAPP_KEEP_FREED_MEMORY=0 it does nothing. Only where
memory comes from changes: every result is the same.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import threading

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30}
GLIBC_DEFAULTS = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}
ENV = "KDAPP_KEEP_FREED_MEMORY"

_lock = threading.Lock()
_holders = 0
_in_force = False


@functools.cache
def _glibc():
    """glibc (loaded on first use, not at import), or None: not Linux, or a libc without mallopt / malloc_trim."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if all(hasattr(libc, name) for name in ("mallopt", "malloc_trim", "gnu_get_libc_version")) else None


def available() -> bool:
    """Whether keep_freed_memory() changes anything here (glibc, and not switched off by KDAPP_KEEP_FREED_MEMORY=0)."""
    return os.environ.get(ENV, "1") != "0" and _glibc() is not None


def _set(settings: dict[int, int]) -> bool:
    return all(_glibc().mallopt(ctypes.c_int(key), ctypes.c_int(value)) == 1 for key, value in settings.items())


@contextlib.contextmanager
def keep_freed_memory():
    """Within: freed large blocks stay in the process for reuse. On leaving (the last holder): glibc's defaults back
    and the free memory returned to the kernel. Yields whether the setting is in force."""
    global _holders, _in_force
    if not available():
        yield False
        return
    with _lock:
        _holders += 1
        if _holders == 1:
            _in_force = _set(KEEP)
        in_force = _in_force
    try:
        yield in_force
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0:
                _set(GLIBC_DEFAULTS)
                _in_force = False
                _glibc().malloc_trim(ctypes.c_size_t(0))
