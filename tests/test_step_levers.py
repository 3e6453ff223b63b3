"""benchmarks/step_levers.py and benchmarks/frozen_layers.py: what their arms change (no timing here)."""
import types

import torch

from conftest import tiny_bert
from test_hidden_dropout import load

step_levers, frozen_layers = load("step_levers"), load("frozen_layers")


def test_fused_qkv_gives_the_models_own_logits():
    model = tiny_bert().eval()
    ids = torch.randint(5, 30, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        for layer in model.bert.encoder.layer:
            layer.attention.self.forward = types.MethodType(step_levers.fused_qkv_forward, layer.attention.self)
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(before, after, atol=1e-5)


def test_bf16_layer_norm_is_layer_norm_outside_autocast_and_bf16_inside():
    torch.manual_seed(0)
    plain = torch.nn.LayerNorm(16)
    torch.nn.init.normal_(plain.weight)
    lever = torch.nn.LayerNorm(16)
    lever.load_state_dict(plain.state_dict())
    lever.__class__ = step_levers.bf16_layer_norm_class()
    x = torch.randn(4, 16)
    assert torch.equal(lever(x), plain(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, reference = lever(x), plain(x)
    assert out.dtype == torch.bfloat16 and reference.dtype == torch.float32  # autocast's own LayerNorm: fp32 out
    assert torch.allclose(out.float(), reference, atol=0.05)


def test_frozen_layers_arms_and_the_parameters_they_train():
    assert [frozen_layers.FREEZE_LAYERS[arm] for arm in frozen_layers.ARMS] == [0, 1]
    model = tiny_bert()
    step = types.SimpleNamespace(student=model)
    every = sum(p.numel() for p in model.parameters())
    assert frozen_layers.trained_parameters(step) == every
    model.bert.embeddings.requires_grad_(False)
    model.bert.encoder.layer[0].requires_grad_(False)
    frozen = sum(p.numel() for m in (model.bert.embeddings, model.bert.encoder.layer[0]) for p in m.parameters())
    assert frozen_layers.trained_parameters(step) == every - frozen


def test_frozen_layers_recipes_are_the_cache_pairs_and_the_app_presets():
    import inspect

    from kdapp import RunConfig
    from kdapp.ui.distill_tab import recipe_preset

    recipes, preset = frozen_layers.RECIPES, recipe_preset("cpu")
    assert set(recipes) == set(frozen_layers.RECIPE_LINES) == {"pair", "preset"}
    assert all(set(r) <= set(inspect.signature(frozen_layers.student_step).parameters) for r in recipes.values())
    # the preset keeps the model's own dropout (MiniLM's 0.1, passed as such) and trains the word embeddings
    assert preset["attention_dropout"] is None and recipes["preset"]["attention_dropout"] == 0.1
    assert preset["hidden_dropout"] is None and recipes["preset"]["hidden_dropout"] is None
    assert recipes["preset"]["freeze_word_embeddings"] == RunConfig().freeze_word_embeddings is False
    assert recipes["pair"] == dict(attention_dropout=0.0, hidden_dropout=0.0, freeze_word_embeddings=True)
