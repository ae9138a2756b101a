"""Shipped pretrained models: export to float16 without optimizer state or machine paths."""
import json

import numpy

from captioning import pretrained
from captioning.checkpoint import load_checkpoint, save_checkpoint
from captioning.data.text import Vocabulary
from captioning.models import build
from nn.optim import Adam
from nn.persist import load_npz


def _checkpoint(tmp_path):
    vocabulary = Vocabulary.build([["a", "red", "square"], ["a", "blue", "circle"]], min_count=1)
    config = {"model": "attention", "vocab_size": len(vocabulary), "feature_dim": 8, "wordvec_dim": 5,
              "hidden_dim": 6, "attention_dim": 4}
    model = build(config, seed=1)
    training = {"epoch": 3, "data": {"name": "flickr8k", "root": "/home/me/flickr8k",
                                     "features": "/home/me/cache", "max_images": None}}
    path = save_checkpoint(tmp_path / "best.npz", model, vocabulary, {"name": "efficientnet_lite0"},
                           optimizer=Adam(model, lr=1e-3), training=training)
    return path, model


def test_export_is_float16_without_optimizer_or_paths_and_loads_as_float32(tmp_path):
    source, model = _checkpoint(tmp_path)
    target = pretrained.export_checkpoint(source, tmp_path / "shipped.npz",
                                          card={"model": "Show, Attend and Tell", "data": "Flickr8k",
                                                "test_scores": {"BLEU-4": 22.4}})
    arrays, meta = load_npz(target)
    assert not any(k.startswith("optim/") for k in arrays)
    assert {v.dtype for v in arrays.values()} == {numpy.dtype(numpy.float16)}
    assert meta["training"]["data"] == {"name": "flickr8k", "root": None, "features": None, "max_images": None}
    loaded = load_checkpoint(target)
    assert loaded.model.dtype == numpy.float32 and not loaded.optimizer_state
    for name, value in model.state_dict().items():
        numpy.testing.assert_allclose(loaded.model.state_dict()[name], value, rtol=1e-3, atol=1e-4)
    card = json.loads((tmp_path / "shipped.json").read_text())
    assert card["test_scores"] == {"BLEU-4": 22.4} and card["size_mb"] > 0
    assert card["parameters"] == model.num_params()


def test_missing_shipped_model_is_none_and_describe_reads_the_card(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    assert pretrained.shipped_path("nothing") is None
    (tmp_path / "m.json").write_text(json.dumps({"model": "M", "data": "D", "test_scores": {"BLEU-4": 20.04}}))
    assert pretrained.describe("m") == "using the shipped model m: M, trained on D (test BLEU-4 20.0)"
