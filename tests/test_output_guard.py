"""Nothing lost, nothing silent: no command overwrites what it reads, a full disk or an odd file
name is a one-line error, and a killed run leaves no temporary files behind for good."""
import errno
import io
import os
import sys

import pytest

from captioning.cli import main
from data_fixtures import make_original, tiny_corpus

TINY = ["--hidden", "24", "--embed", "16", "--attention-dim", "16"]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_run")
    assert main(["train", "--max-images", "12", "--epochs", "1", "--batch-size", "20", *TINY,
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def flickr_run(tmp_path_factory):
    """(data folder, feature cache, run folder) of a tiny Flickr8k look-alike."""
    tmp = tmp_path_factory.mktemp("flickr_run")
    root = make_original(tmp / "flickr", *tiny_corpus())
    cache, run = tmp / "features", tmp / "run"
    assert main(["features", "--data", str(root), "--out", str(cache), "--no-progress"]) == 0
    assert main(["train", "--data", str(root), "--features", str(cache), "--epochs", "1", "--min-count", "1",
                 *TINY, "--quiet", "--out", str(run)]) == 0
    return root, cache, run


def _fails(capsys, argv, message):
    """The command exits 2 with `message` in its one-line error."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    return err


def test_evaluate_never_overwrites_its_checkpoint(shapes_run, capsys, tmp_path, monkeypatch):
    checkpoint = shapes_run / "best.npz"
    before = checkpoint.read_bytes()
    link = tmp_path / "link.npz"
    link.symlink_to(checkpoint)
    monkeypatch.chdir(shapes_run)
    for out in (str(checkpoint), "./best.npz", f"../{shapes_run.name}/best.npz", str(link)):
        _fails(capsys, ["evaluate", "--checkpoint", str(checkpoint), "--out", out],
               f"--out {out} would overwrite the checkpoint {checkpoint}")
    assert checkpoint.read_bytes() == before


def test_evaluate_never_overwrites_its_feature_cache(flickr_run, capsys):
    root, cache, run = flickr_run
    for name in ("features.json", "features.grid.npy", "features.pooled.npy"):
        before = (cache.parent / name).read_bytes()
        _fails(capsys, ["evaluate", "--checkpoint", str(run / "best.npz"), "--features", str(cache),
                        "--out", str(cache.parent / name)], "would overwrite the feature cache")
        assert (cache.parent / name).read_bytes() == before
    # without --features: the cache the checkpoint names is protected too
    _fails(capsys, ["evaluate", "--checkpoint", str(run / "best.npz"), "--out", str(cache) + ".json"],
           "would overwrite the feature cache")
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--features", str(cache)]) == 0


def test_train_refuses_the_data_folder_itself_as_out(flickr_run, capsys, tmp_path):
    root, cache, _ = flickr_run
    before = sorted(os.listdir(root))
    for out in (str(root), str(root) + "/", str(root / "Flickr8k_text" / "..")):
        _fails(capsys, ["train", "--data", str(root), "--features", str(cache), "--out", out],
               f"--out {out} is the data folder")
    assert sorted(os.listdir(root)) == before
    link = tmp_path / "link"
    link.symlink_to(root)
    _fails(capsys, ["train", "--data", str(root), "--features", str(cache), "--out", str(link / "run")],
           "lies inside the data folder")


def test_features_refuses_to_write_into_the_data_folder(flickr_run, capsys, tmp_path):
    root, _, _ = flickr_run
    link = tmp_path / "link"
    link.symlink_to(root / "Flickr8k_text")
    _fails(capsys, ["features", "--data", str(root), "--out", str(link / "cache"), "--no-progress"],
           "lies inside the data folder")
    assert not (link / "cache.json").exists()


def test_train_refuses_a_negative_max_minutes(capsys, tmp_path):
    for value in ("-1", "-0.5"):
        _fails(capsys, ["train", "--max-minutes", value, "--max-images", "12", "--epochs", "1", *TINY,
                        "--out", str(tmp_path / "run")],
               f"--max-minutes must be >= 0, got {float(value)}")
    assert not (tmp_path / "run").exists()


def test_caption_never_draws_over_an_image_or_the_checkpoint(shapes_run, capsys, tmp_path):
    from PIL import Image
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    checkpoint = tmp_path / "model.png"              # a checkpoint under an odd name
    checkpoint.write_bytes((shapes_run / "best.npz").read_bytes())
    link = tmp_path / "again.png"
    link.symlink_to(image)
    _fails(capsys, ["caption", str(image), "--checkpoint", str(checkpoint), "--attention-png", str(checkpoint)],
           "would overwrite the checkpoint")
    _fails(capsys, ["caption", str(link), "--checkpoint", str(checkpoint), "--attention-png", str(image)],
           "would overwrite the input image")


def test_printing_odd_file_names_never_fails(shapes_run, tmp_path, monkeypatch):
    from PIL import Image
    name = os.fsencode(tmp_path) + b"/\xff\xe9-\xc3\xa9.png"        # not UTF-8, then an accented letter
    Image.new("RGB", (64, 64), (200, 30, 30)).save(name, format="PNG")
    ascii_out = io.TextIOWrapper(io.BytesIO(), encoding="ascii")    # as with PYTHONIOENCODING=ascii
    monkeypatch.setattr(sys, "stdout", ascii_out)
    assert main(["caption", os.fsdecode(name), "--checkpoint", str(shapes_run / "best.npz")]) == 0
    ascii_out.flush()
    printed = ascii_out.buffer.getvalue().decode("ascii")
    assert "\\udcff\\udce9-\\xe9.png: " in printed
