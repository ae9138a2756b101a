"""captioning.features: the on-disk feature cache (round trip, refusal of mismatches, resume)."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from captioning.data.images import ImageDecodeError
from captioning.features import (FeatureCacheError, cache_paths, default_cache_path,
                                 extract_features, open_cache)


class QuadrantEncoder:
    """A tiny deterministic encoder: grid = mean colour of each 4x4 quadrant of an 8x8 image."""

    name = "quadrants"
    version = "1"
    preprocess = {"size": 8, "resize": "squash", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}

    def __init__(self, fail_after_batches=None):
        self.batches = 0
        self.images_seen = 0
        self.fail_after_batches = fail_after_batches

    def features(self, images):
        if self.fail_after_batches is not None and self.batches >= self.fail_after_batches:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        self.batches += 1
        self.images_seen += len(images)
        n = images.shape[0]
        quads = images.reshape(n, 3, 2, 4, 2, 4).mean(axis=(3, 5))  # (n, 3, 2, 2)
        grid = quads.reshape(n, 3, 4).transpose(0, 2, 1)  # (n, L=4, D=3)
        return grid, grid.mean(axis=1)


def _photos(folder, count, seed=0):
    rng = np.random.default_rng(seed)
    paths, ids = [], []
    for i in range(count):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
        ids.append(path.name)
    return paths, ids


def _expected(paths):
    encoder = QuadrantEncoder()
    images = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
                       for p in paths])
    return encoder.features(images)


def test_round_trip_values_order_and_index(tmp_path):
    paths, ids = _photos(tmp_path, 7)
    out = tmp_path / "cache" / "toy"
    cache = extract_features(QuadrantEncoder(), paths, ids, out, batch_size=3, progress=False)
    grid, pooled = _expected(paths)
    np.testing.assert_allclose(np.asarray(cache.grid, np.float32), grid, atol=2e-3)  # float16 storage
    np.testing.assert_allclose(np.asarray(cache.pooled, np.float32), pooled, atol=2e-3)
    files = cache_paths(out)
    index = json.loads(files["index"].read_text())
    assert index["image_ids"] == ids and index["complete"] == 7
    assert index["encoder"]["name"] == "quadrants" and index["encoder"]["input"]["size"] == 8
    assert index["grid_shape"] == [7, 4, 3] and index["pooled_shape"] == [7, 3] and index["dtype"] == "float16"
    assert sorted(p.name for p in files["index"].parent.iterdir()) == ["toy.grid.npy", "toy.json", "toy.pooled.npy"]
    # reopened, in another order, by any of its file names
    again = open_cache(files["grid"], image_ids=[ids[5], ids[1]], encoder=QuadrantEncoder())
    g, p = again.for_images([ids[5], ids[1], ids[5]])
    np.testing.assert_allclose(g[:].astype(np.float32), grid[[5, 1, 5]], atol=2e-3)
    np.testing.assert_allclose(p[np.array([2, 0])].astype(np.float32), pooled[[5, 5]], atol=2e-3)
    assert g.shape == (3, 4, 3) and len(p) == 3


def test_float32_storage_is_exact(tmp_path):
    paths, ids = _photos(tmp_path, 3)
    cache = extract_features(QuadrantEncoder(), paths, ids, tmp_path / "c32", progress=False, dtype=np.float32)
    np.testing.assert_allclose(cache.grid, _expected(paths)[0], rtol=1e-6)


def test_refuses_other_images_and_other_encoders_and_says_how_to_rebuild(tmp_path):
    paths, ids = _photos(tmp_path, 4)
    out = tmp_path / "c"
    extract_features(QuadrantEncoder(), paths, ids, out, progress=False, rebuild="python -m captioning features X")
    with pytest.raises(FeatureCacheError, match="python -m captioning features X") as info:
        open_cache(out, image_ids=ids + ["other.jpg"])
    assert "other.jpg" in str(info.value)
    newer = QuadrantEncoder()
    newer.version = "2"
    with pytest.raises(FeatureCacheError, match="rebuild it"):
        open_cache(out, encoder=newer)
    # extracting other images into the same cache needs --overwrite
    with pytest.raises(FeatureCacheError, match="overwrite"):
        extract_features(QuadrantEncoder(), paths[:2], ids[:2], out, progress=False)
    cache = extract_features(QuadrantEncoder(), paths[:2], ids[:2], out, progress=False, overwrite=True)
    assert cache.image_ids == ids[:2]
    with pytest.raises(FileNotFoundError, match="captioning features"):
        open_cache(tmp_path / "nothing")


def test_index_that_disagrees_with_the_arrays_is_refused(tmp_path):
    paths, ids = _photos(tmp_path, 3)
    out = tmp_path / "c"
    extract_features(QuadrantEncoder(), paths, ids, out, progress=False)
    index_path = cache_paths(out)["index"]
    index = json.loads(index_path.read_text())
    index["grid_shape"] = [3, 5, 3]
    index_path.write_text(json.dumps(index))
    with pytest.raises(FeatureCacheError, match="index says"):
        open_cache(out)
    index_path.write_text("{ not json")
    with pytest.raises(FeatureCacheError, match="unreadable"):
        open_cache(out)


def test_interrupted_extraction_resumes_where_it_stopped(tmp_path):
    paths, ids = _photos(tmp_path, 10)
    out = tmp_path / "c"
    crashing = QuadrantEncoder(fail_after_batches=2)  # +1 probe call before the batches
    with pytest.raises(KeyboardInterrupt):
        extract_features(crashing, paths, ids, out, batch_size=3, progress=False)
    index = json.loads(cache_paths(out)["index"].read_text())
    assert index["complete"] == 3  # the probe, then one batch of 3, then the "Ctrl-C"
    with pytest.raises(FeatureCacheError, match="incomplete \\(3 of 10"):
        open_cache(out)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp files left over
    resumed = QuadrantEncoder()
    cache = extract_features(resumed, paths, ids, out, batch_size=3, progress=False)
    assert resumed.images_seen == 7  # only the rows not yet done
    np.testing.assert_allclose(np.asarray(cache.grid, np.float32), _expected(paths)[0], atol=2e-3)
    # a complete cache is simply reopened
    again = QuadrantEncoder()
    extract_features(again, paths, ids, out, progress=False)
    assert again.images_seen == 0


def test_bad_image_stops_with_its_name_or_is_skipped(tmp_path):
    paths, ids = _photos(tmp_path, 4)
    paths[2].write_bytes(b"not a png at all")
    with pytest.raises(ImageDecodeError, match="img02.png"):
        extract_features(QuadrantEncoder(), paths, ids, tmp_path / "a", progress=False)
    cache = extract_features(QuadrantEncoder(), paths, ids, tmp_path / "b", progress=False, skip_bad=True,
                             batch_size=2)
    assert cache.index["skipped"] == ["img02.png"]
    assert not np.any(np.asarray(cache.grid[2])) and np.all(np.asarray(cache.grid[3]) > 0)
    paths[0].write_bytes(b"")  # the first image too (the grid size comes from a good one)
    cache = extract_features(QuadrantEncoder(), paths, ids, tmp_path / "c", progress=False, skip_bad=True)
    assert cache.index["skipped"] == ["img00.png", "img02.png"]


def test_progress_bar_shows_rate_and_eta():
    from captioning.progress import ProgressBar
    stream = io.StringIO()
    bar = ProgressBar("features", 100, stream=stream)
    bar.update(40)
    bar.finish()
    text = stream.getvalue()
    assert "40/100" in text and "img/s" in text and "ETA" in text


def test_default_location_is_outside_the_data_folder():
    path = default_cache_path("flickr8k", "efficientnet_lite0", "test")
    assert str(path) == "outputs/features/flickr8k_efficientnet_lite0_test"


def test_an_empty_or_hand_damaged_cache_is_a_cache_error_not_a_crash(tmp_path):
    paths, ids = _photos(tmp_path, 2)
    out = tmp_path / "c"
    extract_features(QuadrantEncoder(), paths, ids, out, progress=False)
    files = cache_paths(out)
    index = json.loads(files["index"].read_text())
    for field, value in (("dtype", "float99"), ("skipped", None), ("encoder", "x"), ("complete", "all")):
        files["index"].write_text(json.dumps({**index, field: value}))
        with pytest.raises(FeatureCacheError, match=f"damaged.*{field}"):
            open_cache(out)
    files["index"].write_text(json.dumps(index))
    files["pooled"].write_bytes(b"")                       # an empty .npy file
    with pytest.raises(FeatureCacheError, match="corrupt"):
        open_cache(out)
    cache = extract_features(QuadrantEncoder(), paths, ids, out, progress=False, overwrite=True)
    assert cache.pooled.shape[0] == 2                      # --overwrite repairs it


def _poison_row(out, kind, row):
    array = np.load(cache_paths(out)[kind], mmap_mode="r+")
    array[row].flat[0] = np.nan
    array.flush()
    del array


def test_a_row_of_nan_is_refused_naming_its_image_and_each_row_is_checked_once(tmp_path, monkeypatch):
    paths, ids = _photos(tmp_path, 5)
    out = tmp_path / "c"
    extract_features(QuadrantEncoder(), paths, ids, out, progress=False)
    _poison_row(out, "grid", 3)
    cache = open_cache(out)
    grid, pooled = cache.for_images(ids[:3])                 # the damaged row is not among them
    with pytest.raises(FeatureCacheError, match=rf"grid features of image {ids[3]} \(row 3\) hold NaN or inf"):
        cache.for_images(ids[2:])
    cache.for_images(ids, check=("pooled",))                 # the pooled rows are intact
    reads = []
    monkeypatch.setattr(np, "isfinite", lambda values: reads.append(len(values)) or np.ones_like(values, bool))
    cache.for_images(ids[:3])
    cache.for_images(ids, check=("pooled",))
    assert reads == []                                       # checked once, not at every call


def test_train_and_evaluate_refuse_a_cache_row_of_nan(tmp_path, capsys):
    from captioning.cli import main
    from data_fixtures import make_original, tiny_corpus
    splits, captions = tiny_corpus()
    root = make_original(tmp_path / "flickr", splits, captions)
    cache = tmp_path / "features"
    assert main(["features", "--data", str(root), "--out", str(cache), "--no-progress"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--features", str(cache), "--epochs", "1", "--min-count", "1",
                 "--hidden", "24", "--embed", "16", "--attention-dim", "16", "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    index = json.loads(cache_paths(cache)["index"].read_text())
    test_id = splits["test"][1]
    _poison_row(cache, "grid", index["image_ids"].index(test_id))
    assert main(["evaluate", "--checkpoint", str(run / "best.npz"), "--features", str(cache)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: feature cache") and f"features of image {test_id}" in err
    assert err.count("\n") == 1
    train_id = splits["train"][0]
    _poison_row(cache, "grid", index["image_ids"].index(train_id))
    assert main(["train", "--data", str(root), "--features", str(cache), "--epochs", "1", "--min-count", "1",
                 "--quiet", "--out", str(tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert f"features of image {train_id}" in err and "--lr" not in err
