"""keep_freed_memory: glibc's settings while a job runs, its defaults and the memory back after, shared by nested and
concurrent jobs; the real effect on this process's resident memory; training and long inference jobs hold it."""
import ctypes
import os
import threading

import pytest

import kdapp.memory as kmem
from conftest import tiny_bert
from kdapp.inference import logits_from_ids


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, key, value):
        self.calls.append(("mallopt", key.value, value.value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad.value))
        return 1


@pytest.fixture
def fake_libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(kmem, "_glibc", lambda: fake)
    monkeypatch.delenv(kmem.ENV, raising=False)
    return fake


KEEP_CALLS = [("mallopt", kmem.M_MMAP_MAX, 0), ("mallopt", kmem.M_TRIM_THRESHOLD, 1 << 30)]
RESTORE_CALLS = [("mallopt", kmem.M_MMAP_MAX, 65536), ("mallopt", kmem.M_TRIM_THRESHOLD, 128 * 1024),
                 ("malloc_trim", 0)]


def test_sets_keep_and_restores_defaults_once(fake_libc):
    with kmem.keep_freed_memory() as held:
        assert held is True
        assert fake_libc.calls == KEEP_CALLS
        with kmem.keep_freed_memory() as inner:  # nested: nothing set twice, nothing restored early
            assert inner is True
        assert fake_libc.calls == KEEP_CALLS
    assert fake_libc.calls == KEEP_CALLS + RESTORE_CALLS


def test_restored_when_the_job_raises(fake_libc):
    with pytest.raises(RuntimeError):
        with kmem.keep_freed_memory():
            raise RuntimeError("boom")
    assert fake_libc.calls == KEEP_CALLS + RESTORE_CALLS


def test_concurrent_jobs_share_one_setting(fake_libc):
    entered, release = threading.Barrier(3), threading.Event()

    def job():
        with kmem.keep_freed_memory():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    assert fake_libc.calls == KEEP_CALLS  # both hold it: set once
    release.set()
    for t in threads:
        t.join()
    assert fake_libc.calls == KEEP_CALLS + RESTORE_CALLS


@pytest.mark.parametrize("how", ["env", "no glibc"])
def test_does_nothing_when_off_or_without_glibc(monkeypatch, fake_libc, how):
    if how == "env":
        monkeypatch.setenv(kmem.ENV, "0")
    else:
        monkeypatch.setattr(kmem, "_glibc", lambda: None)
    assert not kmem.available()
    with kmem.keep_freed_memory() as held:
        assert held is False
    assert fake_libc.calls == []


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(kmem._glibc() is None or not os.path.exists("/proc/self/statm"), reason="glibc on Linux")
def test_real_glibc_keeps_a_freed_block_then_returns_it(monkeypatch):
    monkeypatch.delenv(kmem.ENV, raising=False)
    libc = kmem._glibc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size = 64 << 20
    libc.malloc_trim(ctypes.c_size_t(0))  # free memory left resident by earlier tests would hide the block
    before = _rss()
    with kmem.keep_freed_memory() as held:
        assert held is True
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        kept = _rss() - before
    returned = _rss() - before
    assert kept > 0.9 * size  # freed, yet still the process's: the next step's tensors reuse it
    assert returned < 0.25 * size  # given back once the job is over


def test_long_inference_jobs_hold_it_single_batches_do_not(fake_libc):
    model = tiny_bert().eval()
    seen = []

    def run(n_rows):
        fake_libc.calls.clear()
        logits_from_ids(model, [[2, 5, 6, 3]] * n_rows, 0, batch_size=4, workers=1)
        seen.append(list(fake_libc.calls))

    run(3)  # one batch: a typed review's path
    run(12)  # three batches
    assert seen == [[], KEEP_CALLS + RESTORE_CALLS]


def test_training_runs_hold_it(monkeypatch, fake_libc, tmp_path):
    import kdapp.train as ktrain

    from kdapp.config import RunConfig

    during = []

    def stop_here(cfg):  # the first step of a run: record what is in force, then stop it
        during.append(list(fake_libc.calls))
        raise RuntimeError("stop")

    monkeypatch.setattr(ktrain, "_prepare_output", stop_here)

    for cfg in (RunConfig(kind="teacher", output_dir=str(tmp_path / "t")),
                RunConfig(kind="distill", teacher=str(tmp_path), output_dir=str(tmp_path / "s"))):
        fake_libc.calls.clear()
        with pytest.raises(RuntimeError, match="stop"):
            (ktrain.train_teacher if cfg.kind == "teacher" else ktrain.distill_student)(cfg)
        assert during[-1] == KEEP_CALLS  # held while the run works
        assert fake_libc.calls == KEEP_CALLS + RESTORE_CALLS  # and given back when it stops
