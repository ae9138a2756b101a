"""The fine-tuned top of EfficientNet-Lite0: gradients (float64, both backends), agreement with
the frozen network, checkpoint weights checked strictly."""
import numpy as np
import pytest

from captioning.encoders.finetuned import NUM_BLOCKS, EfficientNetTop, FineTunedEncoder, input_side
from captioning.models import ConfigMismatchError
from nn import backend
from nn.gradcheck import directional_gradient_check, eval_numerical_gradient_array, rel_error
from tests.conftest import as_xp


def _random_top(xp, k, seed=0):
    """A float64 top with random weights and biases (biases away from 0, as folded ones are)."""
    rng = np.random.default_rng(seed)
    top = EfficientNetTop(k, dtype=np.float64, seed=seed).to_backend()
    for name, param, _ in top.named_parameters():
        if name.endswith(".b"):
            param[...] = as_xp(xp, rng.normal(0.0, 0.5, param.shape))
    return top


def test_gradient_check_of_the_partial_encoder_float64(xp):
    """The last 5 blocks and the head as a whole: a stride-2 block with TF "same" padding, 3x3 and
    5x5 depthwise convs, residual and plain blocks. Small input (2 photos, 4x4 instead of 14x14)."""
    rng = np.random.default_rng(1)
    k = 5
    top = _random_top(xp, k)
    x = as_xp(xp, rng.standard_normal((2, top.in_channels, 4, 4)))
    grid, pooled = top.forward(x)
    assert grid.shape == (2, 4, 1280) and pooled.shape == (2, 1280)     # 4x4 -> 2x2 by block 11
    g_grid = as_xp(xp, rng.standard_normal(grid.shape))        # a loss of both the grid and its mean
    g_pooled = as_xp(xp, rng.standard_normal(pooled.shape))
    dx = top.backward(g_grid, g_pooled)
    grads = {name: grad.copy() for name, _, grad in top.named_parameters()}

    def total():
        grid, pooled = top.forward(x)
        return (grid * g_grid).sum() + (pooled * g_pooled).sum()

    def scalar():
        return float(total())

    # elementwise on a slice of the input (every entry of one channel of one photo)
    one = xp.ones((), dtype=xp.float64)
    part = x[0, :1]
    num = eval_numerical_gradient_array(lambda _: total(), part, one)
    errors = {"x[0, 0]": rel_error(num, dx[0, :1])}
    # each parameter along a random direction (far too many entries to go one by one)
    for name, param, _ in top.named_parameters():
        errors[name] = directional_gradient_check(scalar, [param], [grads[name]], h=1e-7, seed=len(errors))[2]
    # and all together. h = 1e-7: a direction moves up to 1.6 M weights at once, so a step of 1e-5
    # would push some ReLU6 inputs across 0 or 6, where the function has a kink
    params = [param for _, param, _ in top.named_parameters()]
    errors["all"] = directional_gradient_check(scalar, params + [x], [grads[n] for n, _, _ in
                                                                     top.named_parameters()] + [dx], h=1e-7)[2]
    assert len(errors) == 2 + 3 * 2 * k + 2, errors           # 5 blocks of 3 convs (w, b), the head
    assert max(errors.values()) < 1e-6, errors


def test_backward_of_the_pooled_features_alone_is_that_of_their_mean_over_the_grid(xp):
    top = _random_top(xp, 1)
    x = as_xp(xp, np.random.default_rng(2).standard_normal((2, top.in_channels, 3, 3)))
    grid, _ = top.forward(x)
    g_pooled = as_xp(xp, np.random.default_rng(3).standard_normal((2, 1280)))
    by_pooled = top.backward(None, g_pooled)
    by_grid = top.backward(xp.broadcast_to(g_pooled[:, None, :] / grid.shape[1], grid.shape))
    assert rel_error(by_pooled, by_grid) < 1e-12
    with pytest.raises(ValueError, match="give dgrid, dpooled or both"):
        top.backward(None, None)


def test_the_pretrained_top_on_cached_activations_equals_the_frozen_network():
    """features(images) == top(activations entering block N - k), for k = 1 and 5, also through the
    cache layout (rows of locations) and float16 storage (to float16 precision)."""
    from captioning.encoders import EfficientNetLite0, TopInputs

    net = EfficientNetLite0.from_pretrained()
    images = backend.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 3, 64, 64)).astype(np.float32))
    grid, pooled = (backend.to_numpy(a) for a in net.features(images))
    for k in (1, 5):
        encoder = FineTunedEncoder.from_spec(FineTunedEncoder.new_spec(k))
        encoder.side = input_side(64, k)
        rows, _ = TopInputs(k, net).features(images)
        assert rows.shape == (2, input_side(64, k) ** 2, encoder.top.in_channels)
        np.testing.assert_allclose(backend.to_numpy(encoder.encode(rows, "grid", np.float32)), grid,
                                   rtol=1e-5, atol=1e-5)
        stored = backend.to_numpy(rows).astype(np.float16)
        np.testing.assert_allclose(backend.to_numpy(encoder.encode(stored, "pooled", np.float32)), pooled,
                                   atol=2e-2)
    assert input_side(224, 1) == input_side(224, 4) == 7 and input_side(224, 5) == 14


def test_checkpoint_weights_are_checked_strictly():
    encoder = FineTunedEncoder.from_spec(FineTunedEncoder.new_spec(1))
    state = encoder.state_dict()
    assert set(state) == {f"block{NUM_BLOCKS - 1}.{part}.{p}" for part in ("expand", "depthwise", "project")
                          for p in "wb"} | {"head.w", "head.b"}
    state["head.b"] = state["head.b"] + 1.0
    again = FineTunedEncoder.from_spec(encoder.spec, state)
    np.testing.assert_array_equal(backend.to_numpy(again.top.head.params["b"]), state["head.b"])
    with pytest.raises(ConfigMismatchError, match="holds none"):
        FineTunedEncoder.from_spec(encoder.spec, {})
    missing = {k: v for k, v in state.items() if k != "head.w"}
    with pytest.raises(ConfigMismatchError, match="head.w"):
        FineTunedEncoder.from_spec(encoder.spec, missing)
    for bad in ({**encoder.spec, "blocks": 0}, {**encoder.spec, "blocks": "1"}, {"name": "efficientnet_lite0_ft"}):
        with pytest.raises(ConfigMismatchError, match="damaged"):
            FineTunedEncoder.from_spec(bad, state)
