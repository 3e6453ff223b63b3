"""The student's frozen bottom handed over by the teacher, instead of computed a second time.

A student made from the teacher (`student_from_teacher`) starts with the teacher's embeddings and first layer. Frozen
(--freeze_layers) and without dropout, they stay the teacher's, and what they compute for a batch is exactly what
the teacher's own embeddings and first layer compute for it. The teacher computes that anyway when it labels the
batch, so the student can start at its first trained layer from the teacher's hidden state there: the same
arithmetic done once instead of twice. In a run with a frozen first layer that is about a quarter of the student's
step (docs/speed.md). With the logit cache, the teacher's pass over the data keeps those states as well, while they
fit in memory (`fits_in_memory`); rows whose logits the cache file already held get theirs from the teacher's
embeddings and first layers alone (`fill_states`).

What is handed over is the teacher's state in the teacher's precision (float32 beside a bf16 student: the student's
own prefix would have computed it in bf16), so it is the same function of the input, not the same rounding.

`shared_layers(teacher, student)` decides how many layers are shared: the embeddings and the first k encoder layers
of the student must be frozen, without dropout, and equal in every weight to the teacher's embeddings and first k
layers (same dtype: a bf16, half or int8 teacher shares nothing). `starting_at(student, states)` runs the student
from there for one forward call; its parameters, state dict and checkpoint are untouched. BERT and DistilBERT
classifiers only; anything else shares nothing.
"""
from __future__ import annotations

import contextlib

import psutil
import torch
from transformers import BertForSequenceClassification, DistilBertForSequenceClassification

from .inference import logits_from_ids

MEMORY_SHARE = 0.25  # the cached states may take at most this share of the memory available when the run starts


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(embeddings, the encoder: its layers are `.layer`) of a BERT or DistilBERT classifier, None for anything else."""
    if isinstance(model, BertForSequenceClassification):
        return model.bert.embeddings, model.bert.encoder
    if isinstance(model, DistilBertForSequenceClassification):
        return model.distilbert.embeddings, model.distilbert.transformer
    return None


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Two modules with the same tensors, each of the same dtype and shape and equal in value."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape
                                          and torch.equal(sa[k], sb[k]) for k in sa)


def _fixed(module: torch.nn.Module) -> bool:
    """Frozen and deterministic in training: no parameter trains, every dropout is 0."""
    return (all(not p.requires_grad for p in module.parameters())
            and all(m.p == 0 for m in module.modules() if isinstance(m, torch.nn.Dropout)))


def shared_layers(teacher: torch.nn.Module, student: torch.nn.Module) -> int:
    """How many of the student's first encoder layers (with its embeddings) the teacher computes for it: 0 when the
    embeddings are not shared. Fewer than the student's and the teacher's layers both (each one's last layer may be
    computed at [CLS] only, kdapp/cls_only.py)."""
    t, s = _parts(teacher), _parts(student)
    if t is None or s is None or type(teacher) is not type(student):
        return 0
    (t_emb, t_encoder), (s_emb, s_encoder) = t, s
    t_layers, s_layers = t_encoder.layer, s_encoder.layer
    if not (_fixed(s_emb) and _same(s_emb, t_emb)):
        return 0
    k = 0
    while (k < min(len(s_layers), len(t_layers)) - 1 and _fixed(s_layers[k])
           and _same(s_layers[k], t_layers[k])):
        k += 1
    return k


def fits_in_memory(n_tokens: int, hidden_size: int, share: float = MEMORY_SHARE) -> bool:
    """Whether float32 states for n_tokens tokens take at most `share` of the memory available now."""
    return n_tokens * hidden_size * 4 <= share * psutil.virtual_memory().available


def pad_states(rows: list[torch.Tensor], width: int) -> torch.Tensor:
    """(len(rows), width, hidden) float32: each row's (length, hidden) states, right-padded with zeros (padded
    positions are masked out of attention; what a layer computes there is never read)."""
    out = torch.zeros(len(rows), width, rows[0].shape[-1], dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


_SUBCLASSES: dict[type, type] = {}


def _handed_class(cls: type) -> type:
    """A subclass of an embeddings or layer class whose forward returns what it is handed: the states set on the
    embeddings module, or a layer's input unchanged."""
    if cls not in _SUBCLASSES:
        def forward(self, *args, **kwargs):
            if hasattr(self, "kdapp_handed"):  # the embeddings
                return self.kdapp_handed
            return args[0] if args else kwargs["hidden_states"]  # a shared layer: already computed

        _SUBCLASSES[cls] = type(f"Handed{cls.__name__}", (cls,), {"forward": forward})
    return _SUBCLASSES[cls]


@contextlib.contextmanager
def starting_at(student: torch.nn.Module, states: torch.Tensor, layers: int):
    """For the calls inside: the student's embeddings return `states` (batch, length, hidden: the hidden state after
    the first `layers` encoder layers, for the batch about to be passed) and those layers pass it on unchanged, so
    its forward starts at layer `layers`. The classes are restored on the way out."""
    embeddings, encoder = _parts(student)
    modules = [embeddings, *encoder.layer[:layers]]
    classes = [type(m) for m in modules]
    embeddings.kdapp_handed = states
    try:
        for module, cls in zip(modules, classes):
            module.__class__ = _handed_class(cls)
        yield
    finally:
        for module, cls in zip(modules, classes):
            module.__class__ = cls
        del embeddings.kdapp_handed


@contextlib.contextmanager
def bottom_only(model: torch.nn.Module, layers: int):
    """For the calls inside: the model runs its embeddings and first `layers` encoder layers only (its head then
    reads the last of them: the logits mean nothing, the hidden states are the full model's)."""
    _, encoder = _parts(model)
    full = encoder.layer
    encoder.layer = torch.nn.ModuleList(full[:layers])
    try:
        yield
    finally:
        encoder.layer = full


def fill_states(teacher: torch.nn.Module, ids: list[list[int]], pad_id: int, layers: int, states: list,
                batch_size: int = 64) -> int:
    """Give every row of `states` still None (read from the logit file, not run) the teacher's hidden state after its
    first `layers` layers, from those layers alone: a fraction of the teacher's pass. Returns how many it filled."""
    todo = [i for i, row in enumerate(states) if row is None]
    if not todo:
        return 0
    part = [None] * len(todo)
    was_training = teacher.training
    teacher.eval()
    try:
        with bottom_only(teacher, layers):  # its last layer here is a plain one: run every position (cls_only off)
            logits_from_ids(teacher, [ids[i] for i in todo], pad_id, batch_size, cls_only=False, hidden_layer=layers,
                            states=part)
    finally:
        teacher.train(was_training)
    for j, i in enumerate(todo):
        states[i] = part[j]
    return len(todo)
