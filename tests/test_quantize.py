"""CPU int8: per-channel weights, the feed-forward output layers smoothed with a checkpoint's calibration."""
import copy
import logging
import shutil

import pytest
import torch

from conftest import make_reviews, tiny_bert, tiny_distilbert
from kdapp.__main__ import main
from kdapp.encoding import encode
from kdapp.inference import logits_from_ids, prepare_model
from kdapp.models import load_model, student_from_teacher
from kdapp.quantize import (CALIBRATION_FILE, SmoothedLinear, activation_maxima, calibration_tag, ffn_output_layers,
                            quantize_int8, save_calibration, smooth)


def outlier_bert():
    """A tiny BERT whose feed-forward outputs read a few channels 30x larger than the rest, as BERT's do."""
    model = tiny_bert(layers=2, seed=3).eval()
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            layer.intermediate.dense.weight[:4] *= 30
            layer.intermediate.dense.bias[:4] *= 30
            layer.output.dense.weight[:, :4] /= 30
    return model


@pytest.fixture(scope="module")
def ids(tokenizer):
    return encode(tokenizer, list(make_reviews(64, seed=7)["text"]), 32)


def test_ffn_output_layers_are_the_linears_reading_the_intermediate_width():
    assert sorted(ffn_output_layers(tiny_bert(layers=2))) == [f"bert.encoder.layer.{i}.output.dense" for i in (0, 1)]
    assert sorted(ffn_output_layers(tiny_distilbert(layers=1))) == ["distilbert.transformer.layer.0.ffn.lin2"]


def test_maxima_are_the_largest_input_per_channel(ids):
    model = outlier_bert().train()
    maxima = activation_maxima(model, ids, 0)
    assert model.training  # left as it was
    model.eval()
    assert set(maxima) == set(ffn_output_layers(model)) and all(v.shape == (128,) for v in maxima.values())
    seen = []
    layer = model.bert.encoder.layer[1].output.dense
    handle = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].abs().amax((0, 1))))
    logits_from_ids(model, ids, 0, 16, cls_only=False)
    handle.remove()
    assert torch.allclose(maxima["bert.encoder.layer.1.output.dense"], torch.stack(seen).amax(0))
    last = maxima["bert.encoder.layer.1.output.dense"]
    assert last[:4].min() > 5 * last[4:].median()  # the outlier channels stand out
    with pytest.raises(ValueError, match="at least one review"):
        activation_maxima(model, [], 0)


def test_smoothing_leaves_the_fp32_function_unchanged(ids):
    model = outlier_bert()
    before = logits_from_ids(model, ids, 0)
    smoothed = copy.deepcopy(model)
    assert smooth(smoothed, activation_maxima(model, ids[:32], 0)) == 2
    assert isinstance(smoothed.bert.encoder.layer[0].output.dense, SmoothedLinear)
    assert torch.allclose(torch.from_numpy(logits_from_ids(smoothed, ids, 0)), torch.from_numpy(before), atol=1e-4)
    layer, plain = smoothed.bert.encoder.layer[0].output.dense, model.bert.encoder.layer[0].output.dense
    x = torch.rand(3, 5, 128) * 40
    kept = x.clone()
    assert torch.allclose(layer(x), plain(kept), atol=1e-4) and torch.equal(x, kept)  # outside inference mode: a copy


def test_smoothed_int8_is_closer_to_fp32_than_plain_int8(ids):
    model = outlier_bert()
    maxima = activation_maxima(model, ids[:32], 0)  # calibrated on other reviews than those scored
    name = "bert.encoder.layer.1.output.dense"
    inputs = []  # what the layer reads on the scored reviews, and what it gives in fp32
    handle = model.get_submodule(name).register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, 128)))
    logits_from_ids(model, ids[32:], 0, cls_only=False)
    handle.remove()
    x = torch.cat(inputs)
    with torch.inference_mode():
        fp32 = model.get_submodule(name)(x)
    plain, smoothed = quantize_int8(copy.deepcopy(model)), quantize_int8(copy.deepcopy(model), maxima)
    assert (plain.kdapp_int8, smoothed.kdapp_int8) == ("per-channel", "per-channel, 2 feed-forward outputs smoothed")
    with torch.inference_mode():
        errors = [(m.get_submodule(name)(x) - fp32).abs().mean().item() for m in (plain, smoothed)]
    assert errors[1] < 0.5 * errors[0]


def test_maxima_of_the_wrong_shape_or_layer_are_skipped():
    model = tiny_bert(layers=2)
    assert smooth(model, {"bert.encoder.layer.0.output.dense": torch.ones(64),  # the wrong width
                          "bert.encoder.layer.9.output.dense": torch.ones(128)}) == 0
    assert isinstance(model.bert.encoder.layer[0].output.dense, torch.nn.Linear)


def test_a_checkpoint_carries_its_calibration_to_int8(teacher_dir, tmp_path, ids, caplog):
    folder = tmp_path / "model"
    shutil.copytree(teacher_dir, folder)
    assert not hasattr(load_model(str(folder)), "kdapp_int8_maxima")
    assert prepare_model(load_model(str(folder)), "int8", "cpu").kdapp_int8 == "per-channel"

    model = load_model(str(folder))
    save_calibration(folder, activation_maxima(model, ids, 0))
    loaded = load_model(str(folder))
    assert calibration_tag(loaded.kdapp_int8_maxima).startswith("-smooth-") and calibration_tag(None) == ""
    assert prepare_model(loaded, "int8", "cpu").kdapp_int8.endswith("4 feed-forward outputs smoothed")
    assert not hasattr(student_from_teacher(loaded, 2), "kdapp_int8_maxima")  # other layers, other inputs

    (folder / CALIBRATION_FILE).write_bytes(b"not safetensors")  # a broken file: int8 still runs, unsmoothed
    with caplog.at_level(logging.WARNING, logger="kdapp.quantize"):
        broken = load_model(str(folder))
    assert not hasattr(broken, "kdapp_int8_maxima") and "int8-calibrate" in caplog.text
    assert prepare_model(broken, "int8", "cpu").kdapp_int8 == "per-channel"


def test_cli_int8_calibrate_writes_the_file_and_refuses_what_it_cannot_write(teacher_dir, reviews_parquet, tmp_path,
                                                                            capsys):
    folder = tmp_path / "model"
    shutil.copytree(teacher_dir, folder)
    assert main(["int8-calibrate", "--model", str(folder), "--data", str(reviews_parquet), "--rows", "20",
                 "--max_length", "32"]) == 0
    assert "4 feed-forward output layers, 20 reviews at max_length 32" in capsys.readouterr().out
    assert (folder / CALIBRATION_FILE).is_file() and not list(folder.glob("*.tmp"))
    assert hasattr(load_model(str(folder)), "kdapp_int8_maxima")

    assert main(["int8-calibrate", "--model", str(folder), "--data", str(reviews_parquet), "--rows", "8"]) == 0
    assert "8 reviews at max_length 64" in capsys.readouterr().out  # the tiny model's 64 positions, not 512

    assert main(["int8-calibrate", "--model", "bert-base-uncased", "--data", str(reviews_parquet)]) == 2
    assert "not a local model folder" in capsys.readouterr().err
    assert main(["int8-calibrate", "--model", str(folder), "--data", str(reviews_parquet), "--rows", "0"]) == 2
    assert "rows must be at least 1" in capsys.readouterr().err
