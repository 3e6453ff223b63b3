"""The distillation loss on plain tensors, and the DistillationTrainer's wiring of the teacher."""
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import DataCollatorWithPadding, TrainingArguments

from conftest import make_reviews, tiny_bert, tiny_distilbert
from kdapp.cache import teacher_logits
from kdapp.distill import (IGNORE, DistillationTrainer, ce_term, distillation_loss, hidden_layer_pairs,
                           hidden_state_loss, kd_term, mix_pairs, mixed_label_ce)
from kdapp.encoding import tokenize_dataset


def confident_teacher(seed=7):
    """A tiny BERT whose head is scaled up, so its soft targets are far from uniform (a visible KD term)."""
    teacher = tiny_bert(layers=2, seed=seed)
    with torch.no_grad():
        teacher.classifier.weight.mul_(200.0)
    return teacher


def _logits(seed, n=6, k=2, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * scale


LABELS = torch.tensor([0, 1, 1, 0, 1, 0])


# ---------------------------------------------------------------- the loss
def test_alpha_one_is_exactly_cross_entropy():
    s, t = _logits(0), _logits(1)
    loss, ce, kd = distillation_loss(s, t, LABELS, alpha=1.0, temperature=4.0)
    assert torch.equal(loss, F.cross_entropy(s, LABELS))
    assert kd.item() == 0.0


def test_equal_logits_give_zero_kd_term():
    s = _logits(0)
    assert kd_term(s, s.clone(), temperature=2.0).abs().item() < 1e-7
    loss, ce, kd = distillation_loss(s, s.clone(), LABELS, alpha=0.3, temperature=2.0)
    assert abs(kd.item()) < 1e-7
    assert torch.allclose(loss, 0.3 * ce, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_term_is_t_squared_times_kl(temperature):
    s, t = _logits(0), _logits(1)
    p_teacher = F.softmax(t / temperature, dim=-1)
    kl = F.kl_div(F.log_softmax(s / temperature, dim=-1), p_teacher, reduction="batchmean")
    by_hand = (p_teacher * (p_teacher.log() - F.log_softmax(s / temperature, dim=-1))).sum(-1).mean()
    assert torch.allclose(kl, by_hand, atol=1e-6)
    assert torch.allclose(kd_term(s, t, temperature), temperature**2 * kl, atol=1e-6)
    alpha = 0.25
    loss, ce, kd = distillation_loss(s, t, LABELS, alpha=alpha, temperature=temperature)
    assert torch.allclose(loss, alpha * F.cross_entropy(s, LABELS) + (1 - alpha) * temperature**2 * kl, atol=1e-6)


def test_kd_term_scale_between_two_temperatures():
    """Going from T=2 to T=4 multiplies the KD term by (4/2)^2 times the change in KL, not by the KL change alone."""
    s, t = _logits(2), _logits(3)

    def kl(temperature):
        return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1), reduction="batchmean")

    ratio = kd_term(s, t, 4.0) / kd_term(s, t, 2.0)
    assert torch.allclose(ratio, 4.0 * kl(4.0) / kl(2.0), rtol=1e-5)
    assert not torch.allclose(ratio, kl(4.0) / kl(2.0), rtol=1e-2)


def test_unlabelled_rows_contribute_no_cross_entropy():
    s, t = _logits(0), _logits(1)
    labels = LABELS.clone()
    labels[[1, 4]] = IGNORE
    _, ce, kd = distillation_loss(s, t, labels, alpha=0.5)
    changed = s.clone()
    changed[[1, 4]] = torch.tensor([[9.0, -9.0], [-5.0, 7.0]])  # the unlabelled rows' logits move
    _, ce2, kd2 = distillation_loss(changed, t, labels, alpha=0.5)
    assert torch.equal(ce, ce2)
    assert not torch.allclose(kd, kd2)  # the KD term still sees them
    keep = labels != IGNORE
    assert torch.allclose(ce, F.cross_entropy(s[keep], labels[keep]))


def test_all_unlabelled_batch_has_zero_ce_and_a_gradient_path():
    s = _logits(0).requires_grad_(True)
    labels = torch.full((6,), IGNORE)
    ce = ce_term(s, labels)
    assert ce.item() == 0.0
    loss, _, _ = distillation_loss(s, _logits(1), labels, alpha=0.5)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0  # KD term still trains the student


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_hidden_state_loss_zero_for_identical_positive_otherwise(kind):
    g = torch.Generator().manual_seed(0)
    states = [torch.randn(2, 5, 8, generator=g) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    same = hidden_state_loss(states, [x.clone() for x in states], mask, kind)
    assert abs(same.item()) < 1e-6
    other = [torch.randn(2, 5, 8, generator=g) for _ in range(2)]
    assert hidden_state_loss(states, other, mask, kind).item() > 0.01


def test_hidden_state_loss_ignores_padding():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(1, 4, 8, generator=g)]
    t = [s[0].clone()]
    t[0][0, 3] = 100.0  # differs only on the padded position
    mask = torch.tensor([[1, 1, 1, 0]])
    assert abs(hidden_state_loss(s, t, mask, "mse").item()) < 1e-6


def test_hidden_layer_pairs_map_last_to_last():
    assert hidden_layer_pairs(2, 4) == [(1, 2), (2, 4)]
    assert hidden_layer_pairs(3, 6)[-1] == (3, 6)


# ---------------------------------------------------------------- the trainer
def _train_ds(tokenizer, n=24):
    ds = Dataset.from_pandas(make_reviews(n, seed=3)[["text", "label"]])
    return tokenize_dataset(ds, tokenizer, max_length=24)


def _args(tmp_path, **kw):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=8, learning_rate=1e-3,
                  report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, remove_unused_columns=False,
                  label_names=["labels"], disable_tqdm=True, train_sampling_strategy="sequential")
    values.update(kw)
    return TrainingArguments(**values)


def _trainer(tmp_path, tokenizer, teacher, student=None, **kw):
    args_kw = {k: kw.pop(k) for k in list(kw) if k in ("max_steps", "per_device_train_batch_size",
                                                       "gradient_accumulation_steps", "learning_rate",
                                                       "use_cpu")}
    return DistillationTrainer(model=student or tiny_distilbert(), args=_args(tmp_path, **args_kw),
                               train_dataset=_train_ds(tokenizer), processing_class=tokenizer,
                               data_collator=DataCollatorWithPadding(tokenizer), teacher=teacher, **kw)


def test_teacher_gets_no_gradient_and_stays_in_eval_mode(tmp_path, tokenizer):
    teacher = tiny_bert(layers=2, seed=5).train()  # handed over in train mode on purpose
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = _trainer(tmp_path, tokenizer, teacher, alpha=0.5)
    student_before = next(trainer.model.parameters()).clone()
    trainer.train()
    assert trainer.state.global_step == 3
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(student_before, next(trainer.model.parameters()))  # the student did learn


def test_teacher_sits_on_the_students_device(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, tiny_bert(layers=2), alpha=0.5)
    teacher_device = {p.device for p in trainer.teacher.parameters()}
    assert teacher_device == {trainer.args.device} == {p.device for p in trainer.model.parameters()}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_teacher_moves_to_the_gpu(tmp_path, tokenizer):
    teacher = tiny_bert(layers=2)  # on the CPU, fp32
    trainer = _trainer(tmp_path, tokenizer, teacher, alpha=0.5, max_steps=2, use_cpu=False,
                       teacher_dtype=torch.bfloat16)
    trainer.train()
    assert {(p.device.type, p.dtype) for p in trainer.teacher.parameters()} == {("cuda", torch.bfloat16)}
    assert {p.device.type for p in trainer.model.parameters()} == {"cuda"}
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(torch.isfinite(torch.tensor(h["loss_kd"])) for h in logs)


def test_ce_and_kd_parts_are_logged(tmp_path, tokenizer):
    alpha = 0.3
    trainer = _trainer(tmp_path, tokenizer, confident_teacher(), alpha=alpha, temperature=2.0)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert h["loss_ce"] > 0 and h["loss_kd"] > 0
        assert h["loss"] == pytest.approx(alpha * h["loss_ce"] + (1 - alpha) * h["loss_kd"], abs=2e-3)


def test_alpha_one_needs_no_teacher_and_logs_zero_kd(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, tiny_bert(layers=2), alpha=1.0, max_steps=2)
    assert trainer.teacher is None  # never run
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["loss_kd"] == 0.0 and h["loss"] == pytest.approx(h["loss_ce"], abs=1e-3) for h in logs)


def test_logit_cache_gives_the_same_loss_as_on_the_fly(tmp_path, tokenizer):
    teacher = confident_teacher(seed=11)
    ds = _train_ds(tokenizer)
    cache, hit = teacher_logits(teacher, ds["input_ids"], tokenizer.pad_token_id, batch_size=5,
                                cache_dir=tmp_path / "cache")
    assert not hit and cache.shape == (len(ds), 2)
    again, hit = teacher_logits(teacher, ds["input_ids"], tokenizer.pad_token_id, cache_dir=tmp_path / "cache")
    assert hit and torch.equal(again, cache)

    student = tiny_distilbert()
    live = _trainer(tmp_path, tokenizer, teacher, student=student, alpha=0.5)
    cached = _trainer(tmp_path, tokenizer, teacher, student=student, alpha=0.5, logit_cache=cache)
    assert cached.teacher is None  # the teacher is not needed any more
    collate = DataCollatorWithPadding(tokenizer)
    rows = [ds[i] for i in (3, 17, 0, 9, 21)]  # out of order: the cache is read by the idx column
    batch = collate(rows)
    student.train()
    torch.manual_seed(0)
    loss_live = live.compute_loss(student, batch)
    torch.manual_seed(0)
    loss_cached = cached.compute_loss(student, batch)
    assert torch.allclose(loss_live, loss_cached, atol=1e-5)
    assert live._parts["loss_kd"][0].item() > 0.01  # a KD term that matters
    assert torch.allclose(torch.stack(live._parts["loss_kd"]), torch.stack(cached._parts["loss_kd"]), atol=1e-5)


def test_teacher_keeps_its_precision_under_the_students_autocast(tmp_path, tokenizer, monkeypatch):
    # --mixed_precision bf16 --teacher_precision fp32: the student's step runs under bf16 autocast, the teacher on
    # the fly must still give the fp32 logits the cache gives (it did not: autocast reached into its forward)
    import kdapp.distill as kd
    teacher = confident_teacher(seed=11)
    ds = _train_ds(tokenizer)
    cache, _ = teacher_logits(teacher, ds["input_ids"], tokenizer.pad_token_id, cache_dir=None)
    seen = []
    monkeypatch.setattr(kd, "distillation_loss", lambda s, t, *a: seen.append(t) or distillation_loss(s, t, *a))
    trainer = _trainer(tmp_path, tokenizer, teacher, alpha=0.5)
    order = [3, 17, 0, 9, 21]
    batch = DataCollatorWithPadding(tokenizer)([ds[i] for i in order])
    trainer.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trainer.compute_loss(trainer.model, batch)
    assert seen[0].dtype == torch.float32
    assert torch.allclose(seen[0], cache[order], atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True])
def test_teacher_rows_side_by_side_give_the_cache_logits_and_a_backward_pass(tmp_path, tokenizer, monkeypatch,
                                                                             autocast):
    """On CPU with two threads the on-the-fly teacher runs the batch's rows in two parts side by side: the same
    logits as the cache in the batch's order, usable in the loss's backward pass (no inference tensors)."""
    import kdapp.distill as kd
    import kdapp.inference as kinf
    teacher = confident_teacher(seed=11)
    ds = _train_ds(tokenizer)
    cache, _ = teacher_logits(teacher, ds["input_ids"], tokenizer.pad_token_id, cache_dir=None)
    seen, parts = [], []
    monkeypatch.setattr(kd, "distillation_loss", lambda s, t, *a: seen.append(t) or distillation_loss(s, t, *a))
    monkeypatch.setattr(kinf, "row_workers", lambda device, n_rows, workers="auto": 2)
    real_rows = kinf._rows
    monkeypatch.setattr(kinf, "_rows", lambda inputs, a, b: parts.append(real_rows(inputs, a, b)) or parts[-1])
    trainer = _trainer(tmp_path, tokenizer, teacher, alpha=0.5)
    order = [3, 17, 0, 9, 21, 4, 11]
    batch = DataCollatorWithPadding(tokenizer)([ds[i] for i in order])
    trainer.model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    assert [len(p["input_ids"]) for p in parts] == [3, 4]
    assert all(p["input_ids"].shape[1] == int(p["attention_mask"].sum(-1).max()) for p in parts)  # own padding
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0], cache[order], atol=1e-5)
    assert all(p.grad is not None for p in trainer.model.parameters() if p.requires_grad)
    assert torch.get_num_threads() == 1


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer):
    """The KD loss is a per-batch mean: with accumulation it must be divided by the number of micro-batches."""
    def run(batch, accumulate):
        student = tiny_distilbert()
        student.config.dropout = student.config.attention_dropout = student.config.seq_classif_dropout = 0.0
        for m in student.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        trainer = _trainer(tmp_path / f"{batch}", tokenizer, confident_teacher(), student=student,
                           alpha=0.5, max_steps=1, per_device_train_batch_size=batch,
                           gradient_accumulation_steps=accumulate, learning_rate=1e-2)
        trainer.train()
        return torch.cat([p.detach().flatten() for p in student.parameters()])

    one_batch, accumulated = run(8, 1), run(4, 2)
    assert torch.allclose(one_batch, accumulated, atol=1e-5)


# ---------------------------------------------------------------- mixup (MixKD)
def test_mix_pairs_interpolates_embeddings_and_joins_the_masks():
    emb = torch.randn(3, 4, 5)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    perm = torch.tensor([1, 2, 0])
    mixed, joined = mix_pairs(emb, mask, perm, torch.tensor([1.0, 0.0, 0.25]))
    assert torch.equal(mixed[0], emb[0]) and torch.equal(mixed[1], emb[2])  # lam 1: the row; lam 0: its partner
    assert torch.allclose(mixed[2], 0.25 * emb[2] + 0.75 * emb[0])
    assert joined.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]  # the tokens of both rows


def test_mixed_label_ce_weights_both_labels_and_skips_unlabelled_pairs():
    logits, labels = _logits(2, n=4), torch.tensor([0, 1, IGNORE, 1])
    perm, lam = torch.tensor([1, 0, 3, 2]), torch.tensor([0.3, 1.0, 0.5, 0.5])
    ce = lambda i, y: F.cross_entropy(logits[i:i + 1], torch.tensor([y]))  # noqa: E731
    want = (0.3 * ce(0, 0) + 0.7 * ce(0, 1) + ce(1, 1)) / 2  # rows 2 and 3 pair with an unlabelled row
    assert torch.allclose(mixed_label_ce(logits, labels, perm, lam), want)
    assert mixed_label_ce(logits, torch.full((4,), IGNORE), perm, lam).item() == 0.0


def _no_dropout(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


@pytest.mark.parametrize("view, part", [(dict(mixup_alpha=1.0), "loss_mix"), (dict(online_mask_prob=0.3), "loss_masked")])
def test_view_kd_term_gives_teacher_and_student_the_same_input(tmp_path, tokenizer, view, part):
    """A student identical to the teacher gives a zero KD term on an on-the-fly view (mix: the same pairs and lam;
    masking: the same masked tokens); any other student does not."""
    teacher = _no_dropout(confident_teacher(seed=3))
    batch = DataCollatorWithPadding(tokenizer)([_train_ds(tokenizer)[i] for i in range(8)])
    losses = {}
    for name, student in (("same", _no_dropout(confident_teacher(seed=3))), ("other", _no_dropout(tiny_bert(seed=4)))):
        trainer = _trainer(tmp_path, tokenizer, teacher, student=student, alpha=0.5, **view)
        student.train()
        torch.manual_seed(0)
        trainer.compute_loss(student, batch)
        losses[name] = trainer._parts[part][0].item()
    assert losses["same"] == pytest.approx(0.0, abs=1e-6) and losses["other"] > 0.01


def test_mixup_keeps_the_teacher_beside_a_logit_cache_and_logs_its_part(tmp_path, tokenizer):
    teacher = confident_teacher(seed=11)
    ds = _train_ds(tokenizer)
    cache, _ = teacher_logits(teacher, ds["input_ids"], tokenizer.pad_token_id, cache_dir=tmp_path / "cache")
    trainer = _trainer(tmp_path, tokenizer, teacher, alpha=0.5, logit_cache=cache, mixup_alpha=0.4)
    assert trainer.teacher is not None  # the mixes are new inputs: the cache cannot label them
    with pytest.raises(ValueError, match="need the teacher"):
        _trainer(tmp_path, tokenizer, None, alpha=0.5, logit_cache=cache, mixup_alpha=0.4)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 3
    for h in logs:
        assert h["loss_mix"] > 0
        assert h["loss"] == pytest.approx(0.5 * h["loss_ce"] + 0.5 * h["loss_kd"] + h["loss_mix"], abs=2e-3)


def test_no_kd_mixup_trains_on_mixed_labels_without_a_teacher(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, tiny_bert(layers=2), alpha=1.0, max_steps=2, mixup_alpha=0.4)
    assert trainer.teacher is None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["loss_kd"] == 0.0 and h["loss_mix"] > 0 for h in logs)
    assert all(h["loss"] == pytest.approx(h["loss_ce"] + h["loss_mix"], abs=2e-3) for h in logs)


# ---------------------------------------------------------------- online masking (consistent teaching)
def test_online_masks_touch_only_real_non_special_tokens_and_change_every_step(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, tiny_bert(layers=2), alpha=0.5, online_mask_prob=0.5)
    batch = DataCollatorWithPadding(tokenizer)([_train_ds(tokenizer)[i] for i in range(8)])
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    first, second = trainer._masked_ids(batch), trainer._masked_ids(batch)
    changed = first != ids
    assert torch.equal(first[~mask | special], ids[~mask | special])  # padding, [CLS], [SEP] stay
    assert (first[changed] == tokenizer.mask_token_id).all()
    share = changed.sum().item() / (mask & ~special).sum().item()
    assert 0.35 < share < 0.65  # about the rate asked for
    assert not torch.equal(first, second)  # fresh masks each call


def test_no_kd_online_masking_trains_on_the_labels(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, tiny_bert(layers=2), alpha=1.0, max_steps=2, online_mask_prob=0.3)
    assert trainer.teacher is None
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(h["loss_masked"] > 0 and h["loss"] == pytest.approx(h["loss_ce"] + h["loss_masked"], abs=2e-3)
                        for h in logs)
