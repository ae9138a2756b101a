"""SmallCNN: shapes, and gradients of grid and pooled outputs checked numerically in float64."""
import numpy as np
import pytest

from captioning.encoders.small_cnn import SmallCNN
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from tests.conftest import as_xp


def test_shapes_on_shapes_sized_images(xp):
    model = SmallCNN()
    images = as_xp(xp, np.random.default_rng(0).standard_normal((2, 3, 64, 64)), np.float32)
    grid, pooled = model.features(images)
    assert grid.shape == (2, 64, 64) and pooled.shape == (2, 64)
    assert grid.dtype == np.float32
    np.testing.assert_allclose(pooled.get() if hasattr(pooled, "get") else pooled,
                               (grid.mean(axis=1)).get() if hasattr(grid, "get") else grid.mean(axis=1))


@pytest.mark.parametrize("use_grid, use_pooled", [(True, True), (True, False), (False, True)])
def test_gradient_check_float64(xp, use_grid, use_pooled):
    rng = np.random.default_rng(1)
    model = SmallCNN(channels=(3, 4), image_size=8, dtype=np.float64, seed=3).to_backend()
    images = as_xp(xp, rng.standard_normal((2, 3, 8, 8)))
    g_grid = as_xp(xp, rng.standard_normal((2, 4, 4)) if use_grid else np.zeros((2, 4, 4)))
    g_pooled = as_xp(xp, rng.standard_normal((2, 4)) if use_pooled else np.zeros((2, 4)))
    # a non-trivial batchnorm: scale and shift away from 1 and 0
    for name, param, _ in model.named_parameters():
        if name.endswith("gamma") or name.endswith("beta"):
            param[...] = as_xp(xp, rng.uniform(0.5, 1.5, param.shape))

    model.forward(images)
    dimages = model.backward(g_grid if use_grid else None, g_pooled if use_pooled else None)

    def scalar():
        grid, pooled = model.forward(images)
        return (grid * g_grid).sum() + (pooled * g_pooled).sum()

    one = xp.ones((), dtype=xp.float64)
    num = eval_numerical_gradient_array(lambda _: scalar(), images, one)
    errors = {"images": rel_error(num, dimages)}
    for name, param, grad in model.named_parameters():
        analytic = grad.copy()
        num = eval_numerical_gradient_array(lambda _: scalar(), param, one)
        errors[name] = rel_error(num, analytic)
    # a chain of conv, batchnorm (train mode), ReLU and max-pool layers: finite
    # differences on the smallest entries limit the elementwise error to ~1e-7
    assert max(errors.values()) < 1e-6, errors


def test_backward_needs_a_gradient():
    model = SmallCNN(channels=(2,), image_size=4, dtype=np.float64)
    model.forward(np.zeros((1, 3, 4, 4)))
    with pytest.raises(ValueError, match="dgrid, dpooled"):
        model.backward(None, None)


def test_version_changes_with_the_weights():
    model = SmallCNN(channels=(2,), image_size=4)
    before = model.version
    assert before == SmallCNN(channels=(2,), image_size=4).version  # same seed, same weights
    next(iter(model.named_parameters()))[1][...] += 1
    assert model.version != before
