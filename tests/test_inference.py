"""The fast inference path: length-sorted batches in input order, int8/bf16 vs fp32, and the teacher-logit cache."""
import json
import threading

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast

from conftest import VOCAB, make_reviews, tiny_bert
from kdapp.__main__ import main
from kdapp.cache import teacher_logits
from kdapp.encoding import encode, review_windows
import kdapp.inference as kinf
from kdapp.inference import (CPU_BATCH_TOKENS, batch_tokens, length_batches, logits_from_ids, pad_batch, predict,
                              predict_logits, prepare_model, row_workers, teacher_forward, worker_count)

TEXTS = ["great", "the movie was awful and the plot was boring and dull", "good film",
         "it was a really superb story and the acting was brilliant and i loved it", "bad", "the plot was dull",
         "terrible", "a wonderful film"]


@pytest.fixture(scope="module")
def trained_model(tokenizer):
    """A tiny BERT trained for a few dozen steps on synthetic reviews: confident on clear cases."""
    model = tiny_bert(layers=2, seed=3)
    rows = make_reviews(64, seed=1)
    ids = encode(tokenizer, list(rows["text"]), 32)
    labels = torch.tensor(rows["label"].values)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(40):
        batch = list(range((step * 16) % 64, (step * 16) % 64 + 16))
        loss = model(**pad_batch([ids[i] for i in batch], 0, "cpu"), labels=labels[batch]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _direct(model, ids):
    """One row at a time, no padding: what the teacher gives."""
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([row])).logits for row in ids]).float()


def test_length_batches_cover_every_row_once_longest_first():
    lengths = [3, 9, 1, 7, 7, 2, 5]
    batches = length_batches(lengths, 3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths))) and [len(b) for b in batches] == [3, 3, 1]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


def test_a_token_limit_splits_long_batches_and_keeps_one_row_at_least():
    lengths = [3, 9, 1, 7, 7, 2, 5]
    batches = length_batches(lengths, 3, max_tokens=14)  # rows x the batch's longest row <= 14
    assert [[lengths[i] for i in b] for b in batches] == [[9], [7, 7], [5, 3], [2, 1]]
    assert [[lengths[i] for i in b] for b in length_batches(lengths, 3, max_tokens=4)][0] == [9]  # alone, not lost
    assert (batch_tokens("cpu"), batch_tokens("cuda"), batch_tokens("cpu", None)) == (CPU_BATCH_TOKENS, None, None)


def test_pad_batch_pads_to_the_longest_row():
    batch = pad_batch([[2, 5, 3], [2, 3]], pad_id=0, device="cpu")
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_sorted_batches_return_predictions_in_input_order(trained_model, tokenizer, batch_size):
    batched = predict_logits(trained_model, tokenizer, TEXTS, max_length=32, batch_size=batch_size)
    one_by_one = [predict_logits(trained_model, tokenizer, [t], max_length=32)[0] for t in TEXTS]
    assert batched.shape == (len(TEXTS), 2)
    assert torch.allclose(torch.from_numpy(batched), torch.from_numpy(np.stack(one_by_one)), atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_batches_side_by_side_give_each_row_its_own_logits_in_input_order(trained_model, tokenizer, precision):
    rows = list(make_reviews(40, seed=5)["text"])
    ids = encode(tokenizer, rows, 32)
    model = prepare_model(trained_model, precision, "cpu")
    progress = []
    serial = logits_from_ids(model, ids, 0, batch_size=3, workers=1)
    threaded = logits_from_ids(model, ids, 0, batch_size=3, workers=3, progress=lambda n, total: progress.append(
        (n, total, threading.current_thread() is threading.main_thread())))
    n_batches = len(length_batches([len(x) for x in ids], 3))
    assert n_batches >= 10 and progress == [(n, n_batches, True) for n in range(1, n_batches + 1)]
    np.testing.assert_allclose(threaded, serial, atol=1e-5)
    assert torch.get_num_threads() == 1  # the suite's setting (conftest), restored after the workers


def test_teacher_forward_in_parts_matches_the_whole_batch_with_ids_or_embeddings(trained_model, tokenizer):
    ids = encode(tokenizer, TEXTS, 32)
    batch = pad_batch(ids, 0, "cpu")
    whole = teacher_forward(trained_model, batch, workers=1)
    for workers in (2, 3, 8):
        got = teacher_forward(trained_model, batch, workers=workers)
        assert not got.is_inference() and not got.requires_grad
        torch.testing.assert_close(got, whole, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # mixup hands the teacher word embeddings instead of ids
        embeds = trained_model.get_input_embeddings()(batch["input_ids"])
    mixed = {"inputs_embeds": embeds, "attention_mask": batch["attention_mask"]}
    torch.testing.assert_close(teacher_forward(trained_model, mixed, workers=2),
                               teacher_forward(trained_model, mixed, workers=1), atol=1e-5, rtol=1e-5)
    no_mask = {"input_ids": batch["input_ids"]}  # without an attention mask the batch runs whole
    torch.testing.assert_close(teacher_forward(trained_model, no_mask, workers=2),
                               teacher_forward(trained_model, no_mask, workers=1))
    assert torch.get_num_threads() == 1
    assert (row_workers("cpu", 3, workers=8), row_workers("cuda", 64)) == (3, 1)


def test_worker_count_runs_long_cpu_jobs_one_batch_per_thread(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    enough = 2 * kinf.MIN_BATCHES_PER_WORKER
    assert worker_count("cpu", enough) == 2
    assert worker_count("cpu", enough - 1) == worker_count("cuda", 10 * enough) == 1
    assert (worker_count("cpu", 1, workers=3), worker_count("cpu", enough, workers=1)) == (3, 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert worker_count("cpu", 100) == 1


def test_an_error_in_a_worker_reaches_the_caller_and_threads_are_restored(trained_model, tokenizer, monkeypatch):
    ids = encode(tokenizer, list(make_reviews(30, seed=6)["text"]), 32)
    real, calls = kinf.pad_batch, []

    def failing(batch_ids, pad_id, device):
        calls.append(len(batch_ids))
        if len(calls) == 4:
            raise RuntimeError("boom in batch 4")
        return real(batch_ids, pad_id, device)

    monkeypatch.setattr(kinf, "pad_batch", failing)
    with pytest.raises(RuntimeError, match="boom in batch 4"):
        logits_from_ids(trained_model, ids, 0, batch_size=2, workers=2)
    assert torch.get_num_threads() == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("kdapp-infer")]  # every worker stopped


def test_predict_labels_follow_the_logits(trained_model, tokenizer):
    out = predict(trained_model, tokenizer, TEXTS, max_length=32)
    logits = predict_logits(trained_model, tokenizer, TEXTS, max_length=32)
    id2label = trained_model.config.id2label  # a config-built model says LABEL_0 / LABEL_1
    assert [p["label"] for p in out] == [id2label[int(i)] for i in logits.argmax(-1)]
    assert all(abs(sum(p["probs"]) - 1) < 1e-5 and p["score"] >= 0.5 for p in out)


def test_review_windows_cover_every_token_in_overlapping_windows(tokenizer):
    text = " ".join(VOCAB[5:] + VOCAB[5:9])  # 28 tokens, the first 24 all different: each window's start is plain
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows, owner = review_windows(tokenizer, [text, "good film"], max_length=10)
    assert len(body) == 28 and owner.tolist() == [0] * (len(windows) - 1) + [1]
    long = windows[:-1]
    assert all(len(w) == 10 and w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in long)
    starts = [body.index(w[1]) for w in long]
    assert [body[s: s + 8] for s in starts] == [w[1:-1] for w in long]
    assert starts[0] == 0 and starts[-1] == 20  # from the first token to the last
    assert all(0 < b - a <= 4 for a, b in zip(starts, starts[1:]))  # consecutive windows overlap by half or more
    assert len(long) == 6  # and no more windows than that needs: ceil((28 - 8) / 4) + 1
    assert windows[-1] == encode(tokenizer, ["good film"], 10)[0]  # a review that fits: read once, as truncated


def test_windows_average_the_logits_of_each_reviews_windows(trained_model, tokenizer):
    texts = [" ".join(["great"] * 3 + ["the plot"] * 20 + ["awful"] * 3), "good film", "bad"]
    ids, owner = review_windows(tokenizer, texts, 16)
    per_window = _direct(trained_model, ids).numpy()
    expected = np.stack([per_window[owner == i].mean(0) for i in range(len(texts))])
    got = predict_logits(trained_model, tokenizer, texts, max_length=16, windows=True)
    assert (owner == 0).sum() >= 3 and np.allclose(got, expected, atol=1e-5)
    truncated = predict_logits(trained_model, tokenizer, texts, max_length=16)
    assert np.allclose(got[1:], truncated[1:], atol=1e-5)  # short reviews: the same as without windows
    assert not np.allclose(got[0], truncated[0], atol=1e-3)  # the long one: more than its first window


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_low_precision_agrees_with_fp32_on_clear_cases(trained_model, tokenizer, precision):
    texts = list(make_reviews(48, seed=5)["text"])
    fp32 = predict_logits(trained_model, tokenizer, texts, max_length=32)
    fast = predict_logits(prepare_model(trained_model, precision, "cpu"), tokenizer, texts, max_length=32)
    margin = abs(fp32[:, 1] - fp32[:, 0])
    clear = margin > 1.0
    assert clear.sum() >= 24  # the trained model is confident on most rows
    assert (fast.argmax(-1)[clear] == fp32.argmax(-1)[clear]).all()
    assert abs(fast - fp32).max() < 0.5  # bounded drift, not just the same sign


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8", "int4"])
def test_gpu_precisions_agree_with_cpu_fp32_on_clear_cases(trained_model, tokenizer, precision):
    if precision in ("int8", "int4"):
        bnb = pytest.importorskip("bitsandbytes")
    texts = list(make_reviews(48, seed=5)["text"])
    fp32 = predict_logits(trained_model, tokenizer, texts, max_length=32)
    model = prepare_model(trained_model, precision, "cuda")
    assert kinf.model_device(model).type == "cuda" and model.kdapp_precision == precision
    assert kinf.model_device(trained_model).type == "cpu"  # the original stays where it was
    if precision in ("int8", "int4"):  # bitsandbytes layers, not a cast
        kind = bnb.nn.Linear8bitLt if precision == "int8" else bnb.nn.Linear4bit
        assert sum(isinstance(m, kind) for m in model.modules()) >= 4
    fast = predict_logits(model, tokenizer, texts, max_length=32)
    clear = abs(fp32[:, 1] - fp32[:, 0]) > 1.0
    assert clear.sum() >= 24
    assert (fast.argmax(-1)[clear] == fp32.argmax(-1)[clear]).all()
    assert abs(fast - fp32).max() < (1e-3 if precision == "fp32" else 0.5)


def test_gpu_inference_leaves_out_cudnn_attention_and_restores_the_flags():
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with kinf.attention_backends("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before  # CPU: torch's choice, untouched
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        with kinf.attention_backends("cuda"):
            assert not torch.backends.cuda.cudnn_sdp_enabled()
            assert torch.backends.cuda.mem_efficient_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        assert torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_half_attention_is_not_cudnns():
    from torch.nn.attention import SDPBackend

    q = torch.randn(4, 2, 37, 32, device="cuda", dtype=torch.float16)
    mask = torch.zeros(4, 1, 37, 37, device="cuda", dtype=torch.float16)
    with kinf.attention_backends("cuda"):
        assert torch._fused_sdp_choice(q, q, q, mask, 0.0, False) != SDPBackend.CUDNN_ATTENTION.value


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_evaluate_on_the_gpu_reports_each_precision(teacher_dir, reviews_parquet, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    out_file = tmp_path / "gpu.json"
    code = main(["-q", "evaluate", "--model", str(teacher_dir), "--data", str(reviews_parquet), "--max_eval_samples",
                 "40", "--max_length", "32", "--device", "cuda", "--precision", "fp32", "fp16", "int8", "int4",
                 "--json", str(out_file)])
    assert code == 0 and "| int4 |" in capsys.readouterr().out
    results = json.loads(out_file.read_text())["results"]
    assert [r["precision"] for r in results] == ["fp32", "fp16", "int8", "int4"]
    assert all(r["n"] == 40 and 0 <= r["accuracy"] <= 1 and r["size_mb"] > 0 for r in results)


def test_prepare_model_copies_and_refuses_what_the_cpu_cannot_run(trained_model):
    before = {k: v.clone() for k, v in trained_model.state_dict().items()}
    quantized = prepare_model(trained_model, "int8", "cpu")
    assert quantized is not trained_model and quantized.kdapp_precision == "int8"
    assert all(torch.equal(before[k], v) for k, v in trained_model.state_dict().items())  # original untouched
    for precision in ("fp16", "int4", "int2"):
        with pytest.raises(ValueError):
            prepare_model(trained_model, precision, "cpu")


# ---------------------------------------------------------------- the teacher-logit cache
def test_cache_returns_exactly_what_the_teacher_gives(trained_model, tokenizer, tmp_path):
    ids = encode(tokenizer, TEXTS, 32)
    logits, hit = teacher_logits(trained_model, ids, tokenizer.pad_token_id, batch_size=3, cache_dir=tmp_path)
    assert not hit and logits.dtype == torch.float32 and logits.shape == (len(TEXTS), 2)
    assert torch.allclose(logits, _direct(trained_model, ids), atol=1e-5)
    again, hit = teacher_logits(trained_model, ids, tokenizer.pad_token_id, cache_dir=tmp_path)
    assert hit and torch.equal(again, logits)


def _count_computed(monkeypatch):
    """Counts the rows the teacher actually runs on (cache misses)."""
    import kdapp.cache

    seen = []

    def counting(model, ids, *args, **kwargs):
        seen.append(len(ids))
        return logits_from_ids(model, ids, *args, **kwargs)

    monkeypatch.setattr(kdapp.cache, "logits_from_ids", counting)
    return seen


def test_cache_is_invalidated_by_data_tokenizer_max_length_and_teacher(trained_model, tokenizer, tmp_path,
                                                                         monkeypatch):
    computed = _count_computed(monkeypatch)
    pad = tokenizer.pad_token_id
    base = encode(tokenizer, TEXTS, 32)
    teacher_logits(trained_model, base, pad, cache_dir=tmp_path)
    assert computed == [len(TEXTS)]

    changes = {
        "max_length": encode(tokenizer, TEXTS, 8),  # the long reviews get cut differently
        "data": encode(tokenizer, [t + " film" for t in TEXTS], 32),
    }
    other_vocab = tmp_path / "other-vocab"  # same words, other ids: every row's ids change
    other_vocab.mkdir()
    (other_vocab / "vocab.txt").write_text("\n".join(VOCAB[:5] + VOCAB[5:][::-1]) + "\n")
    changes["tokenizer"] = encode(BertTokenizerFast.from_pretrained(str(other_vocab)), TEXTS, 32)
    for what, ids in changes.items():
        changed = sum(a != b for a, b in zip(ids, base))
        assert changed > 0, what
        computed.clear()
        logits, hit = teacher_logits(trained_model, ids, pad, cache_dir=tmp_path)
        assert not hit and computed == [changed], what  # exactly the changed rows are recomputed
        assert torch.allclose(logits, _direct(trained_model, ids), atol=1e-5), what

    computed.clear()
    other_teacher = tiny_bert(layers=2, seed=11).eval()
    logits, hit = teacher_logits(other_teacher, base, pad, cache_dir=tmp_path)
    assert not hit and computed == [len(TEXTS)]  # new weights: a new cache file
    assert torch.allclose(logits, _direct(other_teacher, base), atol=1e-5)


def test_evaluate_reports_int8_next_to_fp32(teacher_dir, reviews_parquet, tmp_path, capsys):
    out_file = tmp_path / "precisions.json"
    code = main(["-q", "evaluate", "--model", str(teacher_dir), "--data", str(reviews_parquet), "--max_eval_samples",
                 "40", "--max_length", "32", "--precision", "fp32", "int8", "--json", str(out_file)])
    assert code == 0
    table = capsys.readouterr().out
    assert "| fp32 |" in table and "| int8 |" in table and "vs fp32 (points)" in table
    results = json.loads(out_file.read_text())["results"]
    assert [r["precision"] for r in results] == ["fp32", "int8"] and all(r["n"] == 40 for r in results)
    assert results[1]["size_mb"] < results[0]["size_mb"] and results[1]["params"] == results[0]["params"]
    assert results[1]["int8"] == "per-channel" and "int8" not in results[0]  # teacher_dir has no int8 calibration
