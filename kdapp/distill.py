"""Knowledge distillation: pure loss functions and a thin Trainer subclass that runs the teacher on the fly.

loss = alpha * CE(y, s) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))  [+ beta * hidden-state loss]
                                                                      [+ mixup term] [+ masked-view term]
Rows labelled -100 (a transfer set of unlabelled reviews) contribute the KD term only.
Mixup (MixKD, Liang et al. 2021): each step also trains on the batch's reviews mixed in pairs at the word embeddings;
the teacher labels each mix (KD term only); a no-KD student (alpha = 1) gets the mix of the two labels instead.
Online masking (consistent teaching, Beyer et al. 2022): each step also trains on the batch with fresh [MASK] tokens,
labelled by the teacher on the same masked input (a no-KD student: by the review's label).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer

from .inference import own_precision, teacher_forward
from .shared_prefix import pad_states, starting_at

IGNORE = -100  # label of transfer-set rows: no CE, KD only


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over the batch; T^2 keeps the gradient scale independent of T."""
    kl = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=-1),
                  F.log_softmax(teacher_logits.float() / temperature, dim=-1), reduction="batchmean", log_target=True)
    return temperature**2 * kl


def ce_term(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled rows only (0 for a batch of transfer rows)."""
    labelled = labels != IGNORE
    if not labelled.any():
        return student_logits.sum() * 0.0  # keeps the graph (and the device) intact
    return F.cross_entropy(student_logits[labelled].float(), labels[labelled])


def distillation_loss(student_logits, teacher_logits, labels, alpha: float = 0.5, temperature: float = 2.0):
    """Returns (loss, ce, kd); alpha = 1 is exactly plain CE and needs no teacher logits."""
    ce = ce_term(student_logits, labels)
    if alpha == 1.0 or teacher_logits is None:
        return ce, ce, torch.zeros_like(ce)
    kd = kd_term(student_logits, teacher_logits, temperature)
    return alpha * ce + (1 - alpha) * kd, ce, kd


def mix_pairs(embeddings: torch.Tensor, attention_mask: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor):
    """lam * e + (1 - lam) * e[perm] per row (embeddings (B, L, H), lam (B,)); the mask covers the tokens of both."""
    lam = lam.to(embeddings.dtype).view(-1, 1, 1)
    mixed = lam * embeddings + (1 - lam) * embeddings[perm]
    return mixed, torch.maximum(attention_mask, attention_mask[perm])


def mixed_label_ce(student_logits: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor):
    """lam * CE(s, y) + (1 - lam) * CE(s, y[perm]), averaged over the pairs whose two rows are labelled."""
    both = (labels != IGNORE) & (labels[perm] != IGNORE)
    if not both.any():
        return student_logits.sum() * 0.0
    logits, lam = student_logits[both].float(), lam[both].float()
    ce = lam * F.cross_entropy(logits, labels[both], reduction="none")
    ce = ce + (1 - lam) * F.cross_entropy(logits, labels[perm][both], reduction="none")
    return ce.mean()


def hidden_state_loss(student_hidden, teacher_hidden, attention_mask, kind: str = "cosine") -> torch.Tensor:
    """Mean over mapped layers and real tokens of 1 - cos(s, t) (or the MSE); zero for identical states.

    student_hidden / teacher_hidden: lists of (B, L, H) tensors, already paired layer by layer.
    """
    mask = attention_mask.unsqueeze(-1).to(student_hidden[0].dtype)  # (B, L, 1)
    n_tokens = mask.sum().clamp(min=1)
    losses = []
    for s, t in zip(student_hidden, teacher_hidden):
        s, t = s.float(), t.float()
        if kind == "cosine":
            per_token = 1 - F.cosine_similarity(s, t, dim=-1).unsqueeze(-1)  # (B, L, 1)
            losses.append((per_token * mask).sum() / n_tokens)
        else:
            losses.append((((s - t) ** 2) * mask).sum() / (n_tokens * s.shape[-1]))
    return torch.stack(losses).mean()


def hidden_layer_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student hidden index, teacher hidden index) pairs; index 0 is the embeddings, j the output of layer j.

    Student layer j is matched to teacher layer j * Lt / Ls (PKD's 'skip' map), so the last layers always pair.
    """
    return [(j, j * teacher_layers // student_layers) for j in range(1, student_layers + 1)]


class DistillationTrainer(Trainer):
    """Trainer whose compute_loss adds the teacher's soft targets (computed on the fly, or read from a cache)."""

    # compute_loss returns a per-batch mean: the Trainer must divide it by the gradient-accumulation steps (with
    # the default None it assumes a loss normalised by num_items_in_batch and skips the division). transformers
    # 5.17 has no such attribute and decides by model_accepts_loss_kwargs alone (set False in __init__)
    loss_is_scaled_for_ga = False

    def __init__(self, *args, teacher=None, alpha: float = 0.5, temperature: float = 2.0,
                 hidden_loss: str = "none", hidden_loss_weight: float = 1.0, logit_cache: torch.Tensor | None = None,
                 teacher_dtype: torch.dtype | None = None, mixup_alpha: float = 0.0, online_mask_prob: float = 0.0,
                 shared_layers: int = 0, teacher_states: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # compute_loss never reads num_items_in_batch
        self.alpha, self.temperature = alpha, temperature
        self.hidden_loss, self.hidden_loss_weight = hidden_loss, hidden_loss_weight
        self.logit_cache = logit_cache  # (N, num_labels) float tensor indexed by the dataset's `idx` column
        # the student's first `shared_layers` layers (and embeddings) are the teacher's (kdapp/shared_prefix.py): it
        # starts from the teacher's hidden state there, on the fly or from teacher_states (by `idx`, None: not kept)
        self.shared_layers, self.teacher_states = shared_layers, teacher_states
        # views of each batch made on the fly (new inputs every step: the teacher labels them, no cache can)
        self.mixup_alpha = mixup_alpha  # > 0: the batch mixed in pairs, lam ~ Beta(mixup_alpha, mixup_alpha)
        self.online_mask_prob = online_mask_prob  # > 0: the batch with fresh [MASK] tokens at this rate
        views = mixup_alpha > 0 or online_mask_prob > 0
        if views and alpha < 1.0 and teacher is None:
            raise ValueError("mixup and online masking with alpha < 1 need the teacher: it labels each new view on "
                             "the fly (no cache can)")
        if online_mask_prob > 0:
            tok = self.processing_class
            if getattr(tok, "mask_token_id", None) is None:
                raise ValueError("online_mask_prob needs a tokenizer (processing_class) with a [MASK] token")
            self._keep_ids = torch.tensor(sorted(tok.all_special_ids), device=self.args.device)
        self.teacher = None
        if teacher is not None and alpha < 1.0 and (logit_cache is None or hidden_loss != "none" or views):
            self.teacher = teacher.to(device=self.args.device, dtype=teacher_dtype).eval().requires_grad_(False)
        self._parts = {"loss_ce": [], "loss_kd": [], "loss_hidden": [], "loss_mix": [], "loss_masked": []}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        idx = inputs.pop("idx", None)
        if not model.training:  # evaluation: the student's own CE, comparable across KD and no-KD runs
            outputs = model(**inputs)
            loss = ce_term(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

        want_hidden = self.hidden_loss != "none" and self.teacher is not None
        teacher_logits, teacher_out, states = self._teacher_side(inputs, idx, want_hidden)
        if states is not None:  # the shared layers already computed: the student starts above them (the model
            # itself, not a torchrun wrapper around it, is switched; the wrapper's forward runs it)
            with starting_at(self.accelerator.unwrap_model(model), states, self.shared_layers):
                outputs = model(**inputs)
        else:
            outputs = model(**inputs, output_hidden_states=want_hidden)
        loss, ce, kd = distillation_loss(outputs.logits, teacher_logits, labels, self.alpha, self.temperature)
        if want_hidden:
            pairs = hidden_layer_pairs(len(outputs.hidden_states) - 1, len(teacher_out.hidden_states) - 1)
            hid = hidden_state_loss([outputs.hidden_states[s] for s, _ in pairs],
                                    [teacher_out.hidden_states[t] for _, t in pairs],
                                    inputs["attention_mask"], self.hidden_loss)
            loss = loss + self.hidden_loss_weight * hid
            self._parts["loss_hidden"].append(hid.detach())
        if self.mixup_alpha > 0:
            mix = self._view_term(model, *self._mixed_view(model, inputs, labels))
            loss = loss + mix
            self._parts["loss_mix"].append(mix.detach())
        if self.online_mask_prob > 0:
            masked = dict(inputs, input_ids=self._masked_ids(inputs))
            masked_term = self._view_term(model, masked, masked, lambda logits: ce_term(logits, labels))
            loss = loss + masked_term
            self._parts["loss_masked"].append(masked_term.detach())
        self._parts["loss_ce"].append(ce.detach())
        self._parts["loss_kd"].append(kd.detach())
        return (loss, outputs) if return_outputs else loss

    def _teacher_side(self, inputs: dict, idx, want_hidden: bool):
        """(the teacher's logits, its whole output for the hidden-state loss, the hidden state the student starts
        from), each None where the step has none: the logits from the cache or the teacher on the fly."""
        if self.alpha == 1.0:
            return None, None, None
        device = inputs["input_ids"].device
        if self.logit_cache is not None and not want_hidden:
            return self.logit_cache[idx.cpu()].to(device), None, self._kept_states(idx, inputs)
        if want_hidden:
            with torch.no_grad(), own_precision(self.teacher):  # not inference_mode: tensors saved for backward
                teacher_out = self.teacher(**inputs, output_hidden_states=True)
            return teacher_out.logits, teacher_out, None
        # on CPU the batch's rows side by side, one part per thread (kdapp/inference.py)
        if self.shared_layers:
            logits, states = teacher_forward(self.teacher, inputs, hidden_layer=self.shared_layers)
            return logits, None, states
        return teacher_forward(self.teacher, inputs), None, None

    def _kept_states(self, idx, inputs: dict) -> torch.Tensor | None:
        """The batch's shared-layer states from teacher_states, padded to the batch; None if a row has none."""
        if not self.shared_layers or self.teacher_states is None or idx is None:
            return None
        rows = [self.teacher_states[i] for i in idx.tolist()]
        if any(row is None for row in rows):
            return None
        return pad_states(rows, inputs["input_ids"].shape[1]).to(inputs["input_ids"].device)

    def _view_term(self, model, student_inputs: dict, teacher_inputs: dict, label_loss) -> torch.Tensor:
        """The loss on a view made on the fly: (1 - alpha) * KD against the teacher on the same view, or for the
        no-KD student (alpha = 1) label_loss(student logits)."""
        logits = model(**student_inputs).logits
        if self.alpha == 1.0:
            return label_loss(logits)
        t_logits = teacher_forward(self.teacher, teacher_inputs)
        return (1 - self.alpha) * kd_term(logits, t_logits, self.temperature)

    def _mixed_view(self, model, inputs: dict, labels: torch.Tensor):
        """The batch's reviews mixed in pairs at the word embeddings, each model in its own embeddings with the same
        pairs and lam; the no-KD student's loss is the mixed labels' CE."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        perm = torch.randperm(len(ids), device=ids.device)
        lam = torch.distributions.Beta(self.mixup_alpha, self.mixup_alpha).sample((len(ids),)).to(ids.device)
        rest = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}  # token_type_ids
        embeds, mixed_mask = mix_pairs(model.get_input_embeddings()(ids), mask, perm, lam)
        teacher_inputs = None
        if self.alpha < 1.0:
            with torch.no_grad():
                t_embeds, _ = mix_pairs(self.teacher.get_input_embeddings()(ids), mask, perm, lam)
            teacher_inputs = dict(rest, inputs_embeds=t_embeds, attention_mask=mixed_mask)
        return (dict(rest, inputs_embeds=embeds, attention_mask=mixed_mask), teacher_inputs,
                lambda logits: mixed_label_ce(logits, labels, perm, lam))

    def _masked_ids(self, inputs: dict) -> torch.Tensor:
        """input_ids with fresh [MASK] tokens: each real, non-special token with probability online_mask_prob."""
        ids = inputs["input_ids"]
        hit = torch.rand(ids.shape, device=ids.device) < self.online_mask_prob
        hit &= inputs["attention_mask"].bool() & ~torch.isin(ids, self._keep_ids)
        return ids.masked_fill(hit, self.processing_class.mask_token_id)

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds the mean CE, KD (hidden, mix, masked) parts since the last log to every training log line."""
        if "loss" in logs:
            for name, values in self._parts.items():
                if values:
                    logs[name] = round(torch.stack(values).mean().item(), 4)
                    values.clear()
        super().log(logs, *args, **kwargs)
