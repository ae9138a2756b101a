"""Flickr30k and COCO through Karpathy's split files, and which data set `--data DIR` reads."""
import json

import numpy as np
import pytest

from captioning.checkpoint import load_checkpoint
from captioning.cli import main
from captioning.data.datasets import CocoDataset, Flickr8kDataset, Flickr30kDataset, folder_dataset
from captioning.data.flickr8k import CaptionFileError
from captioning.data.karpathy import load_karpathy
from captioning.data.splits import CaptionSplit
from captioning.features import _Rows, cache_size

from data_fixtures import coco_folder, make_coco, make_flickr30k, make_karpathy, make_original, tiny_corpus

TINY = ["--hidden", "24", "--embed", "16", "--attention-dim", "16"]


def test_flickr30k_maps_restval_to_train_and_val_to_dev(tmp_path):
    splits, captions = tiny_corpus()
    data = load_karpathy(make_flickr30k(tmp_path, splits, captions), "flickr30k")
    for name in ("train", "dev", "test"):
        assert data[name].image_ids == splits[name]    # the last train image is "restval"
    assert data["train"].image_paths[0] == str(tmp_path / "flickr30k-images" / splits["train"][0])
    assert data["dev"].tokens[0][0] == ["a", "dog", "runs", "number", "6"]
    assert not data.report.skipped


def test_coco_reads_photos_from_their_filepath_folders_here_or_in_images(tmp_path):
    splits, captions = tiny_corpus()
    for under in ("", "images"):
        root = make_coco(tmp_path / (under or "here"), splits, captions, under=under)
        data = load_karpathy(root, "coco")
        assert data["train"].image_ids == [f"{coco_folder(i)}/{i}" for i in splits["train"]]
        assert data["test"].image_paths[1] == str(root / under / coco_folder(splits["test"][1]) / splits["test"][1])
        assert folder_dataset(root) is CocoDataset


def test_the_folder_says_which_data_set_it_holds(tmp_path):
    splits, captions = tiny_corpus()
    assert folder_dataset(make_flickr30k(tmp_path / "f30k", splits, captions)) is Flickr30kDataset
    assert folder_dataset(make_flickr30k(tmp_path / "f30k_images", splits, captions, "images")) is Flickr30kDataset
    assert folder_dataset(make_original(tmp_path / "f8k", splits, captions)) is Flickr8kDataset
    # Karpathy's zip holds all three split files: a Flickr8k folder with images/ stays Flickr8k
    both = make_karpathy(tmp_path / "both", splits, captions, image_folder="images")
    (both / "dataset_flickr30k.json").write_text(json.dumps({"images": []}))
    assert folder_dataset(both) is Flickr8kDataset
    assert folder_dataset(None) is Flickr8kDataset


def test_an_incomplete_folder_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "dataset_coco.json").write_text("{}")
    assert main(["features", "--data", str(tmp_path / "coco")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no COCO in" in err and "train2014/ or val2014/" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset_coco.json"):
        folder_dataset(tmp_path / "empty")


@pytest.mark.parametrize("filepath, expected", [
    (None, "images[0].filepath is null, expected the image's folder"),
    ("../secret", "images[0].filepath is '../secret', expected the name of one folder"),
    (2014, "images[0].filepath is a number (2014)"),
])
def test_coco_entries_need_a_folder_name_in_filepath(tmp_path, capsys, filepath, expected):
    (tmp_path / "val2014").mkdir()
    entry = {"filename": "a.jpg", "split": "test", "sentences": [{"tokens": ["a", "dog"]}]}
    if filepath is not None:
        entry["filepath"] = filepath
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [entry]}))
    with pytest.raises(CaptionFileError) as info:
        load_karpathy(tmp_path, "coco")
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert main(["features", "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_a_flickr30k_file_of_another_schema_is_one_line(tmp_path, capsys):
    (tmp_path / "flickr30k-images").mkdir()
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps({"images": [{"filename": "a.jpg"}]}))
    assert main(["features", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "dataset_flickr30k.json: images[0].split is null" in err


def test_the_cache_size_is_said_before_it_is_made():
    nbytes, line = cache_size(123287, (49, 1280), "float16")
    assert line == "the cache will take 15.8 GB (123287 photos x 49 x 1280 float16 + pooled)"
    assert nbytes == 123287 * 50 * 1280 * 2 + 2 ** 16 + 100 * 123287


def test_a_subset_of_cached_rows_reads_nothing():
    grid = np.arange(5 * 2 * 3, dtype=np.float16).reshape(5, 2, 3)
    rows = _Rows(grid, np.array([4, 2, 0, 1]))
    split = CaptionSplit("dev", list("abcd"), None, [["x"]] * 4, [[["x"]]] * 4, features=rows)
    part = split.subset([3, 0]).features
    assert isinstance(part, _Rows) and np.array_equal(part[np.arange(2)], grid[[1, 4]])
    assert isinstance(split.head(2).features, _Rows)


@pytest.mark.parametrize("name, make", [("flickr30k", make_flickr30k), ("coco", make_coco)])
def test_features_train_and_evaluate_on_a_tiny_folder(tmp_path, monkeypatch, capsys, name, make):
    root = make(tmp_path / "data", *tiny_corpus())
    monkeypatch.chdir(tmp_path)          # the default cache goes to ./outputs/features
    assert main(["features", "--data", str(root), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "the cache will take" in err and "10 photos x 49 x 1280 float16 + pooled" in err
    assert (tmp_path / "outputs" / "features" / f"{name}_efficientnet_lite0.json").is_file()
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--epochs", "1", "--min-count", "1", *TINY, "--quiet",
                 "--out", str(run)]) == 0
    assert load_checkpoint(run / "best.npz").training["data"]["name"] == name
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--beam", "1"]) == 0   # no --data
    assert f"{name} test: 2 images" in capsys.readouterr().out
    # without its cache, evaluate encodes the test photos into this data set's default test cache
    for path in (tmp_path / "outputs" / "features").iterdir():
        path.unlink()
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--beam", "1"]) == 0
    assert (tmp_path / "outputs" / "features" / f"{name}_efficientnet_lite0_test.json").is_file()
