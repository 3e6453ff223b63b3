"""The last layer at [CLS] only: what a BERT or DistilBERT sequence classifier reads, and all it computes.

A sequence classifier reads one position of the last layer, [CLS] (position 0): BERT's pooler takes
`hidden[:, 0]`, DistilBERT's head `hidden_state[:, 0]`. The last layer still needs the keys and values of every token
(they are what [CLS] attends to), but its query, attention output, feed-forward block and layer norms are needed for
that one position only. Computing only those drops about 10/12 of the last layer's position-wise work: one sixth
less forward work for a 6-layer model, over a quarter less forward and backward for a 3-layer student.

It is the same computation: the logits are equal up to float rounding and so are the gradients (positions other
than [CLS] get no gradient from the last layer either way). With dropout on, the masks at [CLS] are drawn the same
way, only fewer of them are drawn. Switched by class (as `dropout.use_fast_dropout` does): the parameters, the
state dict and a saved checkpoint are unchanged. Only self-attention encoders on the eager / sdpa / kdapp attention
paths are switched; anything else (decoders, other attention kernels, other architectures) runs as it was.
"""
from __future__ import annotations

import contextlib

import torch
from transformers import BertForSequenceClassification, DistilBertForSequenceClassification
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.bert import modeling_bert
from transformers.models.distilbert import modeling_distilbert

from .dropout import ATTN_IMPLEMENTATION

ATTENTION_PATHS = ("eager", "sdpa", ATTN_IMPLEMENTATION)


def _attend_from_first(module, q_lin, k_lin, v_lin, hidden, attention_mask, kwargs) -> torch.Tensor:
    """Self-attention output at position 0 only: (batch, 1, hidden); keys and values from every position."""
    batch, length, _ = hidden.shape
    size = module.attention_head_size
    query = q_lin(hidden[:, :1]).view(batch, 1, -1, size).transpose(1, 2)
    key = k_lin(hidden).view(batch, length, -1, size).transpose(1, 2)
    value = v_lin(hidden).view(batch, length, -1, size).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # (batch, 1, query, key): the [CLS] query's row
    eager = (modeling_bert if isinstance(module, modeling_bert.BertSelfAttention)
             else modeling_distilbert).eager_attention_forward
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(module.config._attn_implementation, eager)
    out, _ = attend(module, query, key, value, attention_mask, dropout=module.dropout.p if module.training else 0.0,
                    scaling=module.scaling, **kwargs)
    return out.reshape(batch, 1, -1)


class ClsOnlyBertLayer(modeling_bert.BertLayer):
    """BertLayer (encoder self-attention) whose output is position 0 only: (batch, 1, hidden)."""

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                cache=None, **kwargs):
        sa = self.attention.self
        attended = _attend_from_first(sa, sa.query, sa.key, sa.value, hidden_states, attention_mask, kwargs)
        return self.feed_forward_chunk(self.attention.output(attended, hidden_states[:, :1]))


class ClsOnlyDistilBertBlock(modeling_distilbert.TransformerBlock):
    """DistilBERT's TransformerBlock whose output is position 0 only: (batch, 1, dim)."""

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        sa = self.attention
        attended = sa.out_lin(_attend_from_first(sa, sa.q_lin, sa.k_lin, sa.v_lin, hidden_states, attention_mask,
                                                 kwargs))
        attended = self.sa_layer_norm(attended + hidden_states[:, :1])
        return self.output_layer_norm(self.ffn(attended) + attended)


_SWAPS = {modeling_bert.BertLayer: ClsOnlyBertLayer, modeling_distilbert.TransformerBlock: ClsOnlyDistilBertBlock}
_BACK = {v: k for k, v in _SWAPS.items()}


def _last_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    if isinstance(model, BertForSequenceClassification):
        layers = model.bert.encoder.layer
    elif isinstance(model, DistilBertForSequenceClassification):
        layers = model.distilbert.transformer.layer
    else:
        return None
    return layers[-1] if len(layers) else None


def supports_cls_only(model: torch.nn.Module) -> bool:
    """A BERT / DistilBERT sequence classifier, encoder self-attention on the eager, sdpa or kdapp attention path."""
    last = _last_layer(model)
    if last is None or type(last) not in _SWAPS and type(last) not in _BACK:
        return False
    config = model.config
    return not getattr(config, "is_decoder", False) and config._attn_implementation in ATTENTION_PATHS


def use_cls_only(model: torch.nn.Module) -> bool:
    """Switch a classifier's last layer to its [CLS]-only form, in place; True if it is (now or already) switched.

    The model's last hidden state becomes (batch, 1, hidden): do not use it where every position's hidden state is
    read (a hidden-state loss, token embeddings). Undo with `restore_last_layer`.
    """
    if not supports_cls_only(model):
        return False
    last = _last_layer(model)
    last.__class__ = _SWAPS.get(type(last), type(last))
    return True


def restore_last_layer(model: torch.nn.Module) -> None:
    """Undo `use_cls_only`: every position of the last layer again."""
    for module in model.modules():
        if type(module) in _BACK:
            module.__class__ = _BACK[type(module)]


def is_cls_only(model: torch.nn.Module) -> bool:
    return type(_last_layer(model)) in _BACK


@contextlib.contextmanager
def cls_only(model: torch.nn.Module, enabled: bool = True):
    """`use_cls_only` for a block; restores only what it switched (a model switched before stays switched)."""
    switched = enabled and not is_cls_only(model) and use_cls_only(model)
    try:
        yield
    finally:
        if switched:
            restore_last_layer(model)
