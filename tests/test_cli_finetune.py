"""`features / train / evaluate / caption` with --fine-tune-blocks on a tiny photo folder (in process)."""
import numpy as np
import pytest

from captioning.cli import main
from nn import backend
from nn.persist import load_npz, save_npz

TINY_MODEL = ["--hidden", "24", "--embed", "16", "--attention-dim", "16", "--min-count", "1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A Flickr8k look-alike of 10 photos and the cache of the activations entering its last block."""
    from data_fixtures import make_original, tiny_corpus

    base = tmp_path_factory.mktemp("finetune")
    root = make_original(base / "flickr", *tiny_corpus())
    cache = base / "ft1"
    assert main(["features", "--data", str(root), "--fine-tune-blocks", "1", "--out", str(cache),
                 "--no-progress"]) == 0
    return root, cache


@pytest.mark.parametrize("model", ["attention", "show-tell"])
def test_a_short_fine_tuning_run_trains_the_top_and_its_checkpoint_uses_it(tiny_folder, tmp_path, capsys, model):
    from captioning.checkpoint import load_checkpoint
    from captioning.encoders import make_encoder, new_encoder
    from captioning.features import open_cache

    root, cache = tiny_folder
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--features", str(cache), "--fine-tune-blocks", "1",
                 "--model", model, "--epochs", "1", "--batch-size", "10", "--lr", "1e-2", *TINY_MODEL, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0_ft (last 1 block and head fine-tuned, lr 0.001, batchnorm folded)" in out
    # the checkpoint holds the whole top, trained away from the pretrained weights
    ckpt = load_checkpoint(run / "last.npz")
    assert ckpt.encoder["name"] == "efficientnet_lite0_ft" and ckpt.encoder["blocks"] == 1
    fresh = new_encoder(ckpt.encoder)      # a new run's: the pretrained weights
    pretrained = fresh.state_dict()
    assert set(ckpt.encoder_state) == set(pretrained)
    moved = [k for k in pretrained if not np.array_equal(ckpt.encoder_state[k], pretrained[k])]
    assert sorted(moved) == sorted(pretrained)
    # caption (image files): the whole network with the fine-tuned top, i.e. the top on the photo's
    # cached activations (to float16 storage precision)
    encoder = make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)
    index = open_cache(cache)
    photo = root / "Flicker8k_Dataset" / index.image_ids[0]
    from_files, _ = encoder.file_encoder(ckpt.model.feature_kind, np.float32)([str(photo)])
    from_cache = encoder.encode(index.grid[:1], ckpt.model.feature_kind, np.float32)
    np.testing.assert_allclose(backend.to_numpy(from_files), backend.to_numpy(from_cache), atol=0.05)
    before = fresh.encode(index.grid[:1], ckpt.model.feature_kind, np.float32)
    assert np.abs(backend.to_numpy(before) - backend.to_numpy(from_cache)).max() > 0.05
    assert main(["caption", str(photo), "--checkpoint", str(run / "best.npz")]) == 0
    # evaluate reads the activation cache the run recorded
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--beam", "1",
                 "--out", str(tmp_path / "test.json")]) == 0
    assert "BLEU-4" in capsys.readouterr().out


def test_evaluate_without_a_cache_encodes_the_split_activations_and_missing_weights_are_refused(
        tiny_folder, tmp_path, capsys, monkeypatch):
    import shutil

    from captioning.features import cache_paths

    root, cache = tiny_folder
    copy = tmp_path / "copy"
    for name, path in cache_paths(cache).items():
        shutil.copy(path, cache_paths(copy)[name])
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--features", str(copy), "--fine-tune-blocks", "1",
                 "--epochs", "1", *TINY_MODEL, "--out", str(run)]) == 0
    for path in cache_paths(copy).values():       # the cache the checkpoint recorded is gone
        path.unlink()
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--data", str(root), "--beam", "1"]) == 0
    made = tmp_path / "outputs" / "features" / "flickr8k_efficientnet_lite0_ft1_test.json"
    assert made.is_file()
    # a checkpoint without one of its top's weights is refused, never run with pretrained ones
    arrays, meta = load_npz(run / "best.npz")
    del arrays["encoder/head.w"]
    save_npz(tmp_path / "damaged.npz", arrays, meta=meta)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "damaged.npz"), "--beam", "1"]) == 2
    assert "head.w" in capsys.readouterr().err


def test_the_cache_must_be_the_one_of_k(tiny_folder, tmp_path, capsys):
    root, cache = tiny_folder
    for options, message in (
            (["--fine-tune-blocks", "2", "--features", str(cache)], "was made by efficientnet_lite0_ft1, not "
                                                                   "efficientnet_lite0_ft2"),
            (["--fine-tune-blocks", "1", "--features", str(tmp_path / "none")],
             "features --data " + str(root) + " --fine-tune-blocks 1"),
            (["--features", str(cache)], "was made by efficientnet_lite0_ft1, not efficientnet_lite0")):
        assert main(["train", "--data", str(root), *options, "--out", str(tmp_path / "run")]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    (["--fine-tune-blocks", "1"], "--fine-tune-blocks needs --data"),
    (["--data", "x", "--fine-tune-blocks", "17"], "--fine-tune-blocks must be from 0 to 16"),
    (["--data", "x", "--encoder-lr", "1e-4"], "--encoder-lr needs a trainable encoder"),
    (["--data", "x", "--fine-tune-blocks", "1", "--encoder-lr", "0"], "--encoder-lr must be > 0"),
])
def test_train_refuses_bad_fine_tuning_options(tmp_path, capsys, options, message):
    assert main(["train", *options, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
