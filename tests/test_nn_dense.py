"""Affine layer, activations and dropout: hand-computed values and gradient checks."""
import numpy
import pytest

from conftest import as_xp
from nn import backend
from nn.dense import (
    affine_backward, affine_forward, dropout_backward, dropout_forward,
    relu6_backward, relu6_forward, relu_backward, relu_forward, sigmoid,
    sigmoid_backward, sigmoid_forward, tanh_backward, tanh_forward,
)
from nn.gradcheck import eval_numerical_gradient_array, rel_error

TOL = 1e-7


def away_from(values, kinks, margin=0.05):
    """Move values that sit within `margin` of a kink (where f is not differentiable)."""
    for k in kinks:
        close = numpy.abs(values - k) < margin
        values[close] = k + 2 * margin
    return values


def test_affine_forward_hand_computed(xp):
    x = as_xp(xp, [[1.0, 2.0], [3.0, 4.0]])
    w = as_xp(xp, [[1.0, 0.5], [-1.0, 2.0]])
    b = as_xp(xp, [0.5, -1.0])
    out, _ = affine_forward(x, w, b)
    # row 0: [1 - 2 + 0.5, 0.5 + 4 - 1]; row 1: [3 - 4 + 0.5, 1.5 + 8 - 1]
    assert numpy.allclose(backend.to_numpy(out), [[-0.5, 3.5], [-0.5, 8.5]])


def test_affine_flattens_trailing_axes_and_gradients(xp):
    gen = numpy.random.default_rng(0)
    x = as_xp(xp, gen.standard_normal((3, 2, 2, 3)))
    w = as_xp(xp, gen.standard_normal((12, 4)))
    b = as_xp(xp, gen.standard_normal(4))
    dout = as_xp(xp, gen.standard_normal((3, 4)))
    out, cache = affine_forward(x, w, b)
    expected = backend.to_numpy(x).reshape(3, 12) @ backend.to_numpy(w) + backend.to_numpy(b)
    assert numpy.allclose(backend.to_numpy(out), expected)
    dx, dw, db = affine_backward(dout, cache)
    assert dx.shape == x.shape
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: affine_forward(v, w, b)[0], x, dout)) < TOL
    assert rel_error(dw, eval_numerical_gradient_array(lambda v: affine_forward(x, v, b)[0], w, dout)) < TOL
    assert rel_error(db, eval_numerical_gradient_array(lambda v: affine_forward(x, w, v)[0], b, dout)) < TOL


def test_affine_keeps_float32(xp):
    x = as_xp(xp, numpy.ones((2, 3)), numpy.float32)
    w = as_xp(xp, numpy.ones((3, 4)), numpy.float32)
    b = as_xp(xp, numpy.zeros(4), numpy.float32)
    out, cache = affine_forward(x, w, b)
    assert out.dtype == numpy.float32
    assert all(g.dtype == numpy.float32 for g in affine_backward(out, cache))


def test_affine_bad_inputs(xp):
    x = as_xp(xp, numpy.ones((2, 3)))
    with pytest.raises(ValueError, match=r"affine_forward.*\(3, M\)"):
        affine_forward(x, as_xp(xp, numpy.ones((4, 2))), as_xp(xp, numpy.ones(2)))
    with pytest.raises(ValueError, match=r"affine_forward: b must have shape \(2,\), got \(3,\)"):
        affine_forward(x, as_xp(xp, numpy.ones((3, 2))), as_xp(xp, numpy.ones(3)))
    with pytest.raises(TypeError, match="affine_forward.*dtype"):
        affine_forward(x, as_xp(xp, numpy.ones((3, 2)), numpy.float32), as_xp(xp, numpy.ones(2)))
    with pytest.raises(TypeError, match="affine_forward.*floating"):
        affine_forward(as_xp(xp, numpy.ones((2, 3)), numpy.int64), as_xp(xp, numpy.ones((3, 2))),
                       as_xp(xp, numpy.ones(2)))


@pytest.mark.gpu
def test_affine_refuses_backend_mix():
    if not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    cupy = backend.use("cupy")
    with pytest.raises(TypeError, match="affine_forward.*mixed"):
        affine_forward(numpy.ones((2, 3)), cupy.ones((3, 2)), numpy.ones(2))


def test_activation_values(xp):
    x = as_xp(xp, [-7.0, -1.0, 0.5, 3.0, 6.5])
    assert numpy.allclose(backend.to_numpy(relu_forward(x)[0]), [0, 0, 0.5, 3.0, 6.5])
    assert numpy.allclose(backend.to_numpy(relu6_forward(x)[0]), [0, 0, 0.5, 3.0, 6.0])
    assert numpy.allclose(backend.to_numpy(tanh_forward(x)[0]), numpy.tanh([-7.0, -1.0, 0.5, 3.0, 6.5]))
    assert numpy.allclose(backend.to_numpy(sigmoid_forward(x)[0]),
                          1 / (1 + numpy.exp([7.0, 1.0, -0.5, -3.0, -6.5])))


def test_sigmoid_is_stable_for_large_inputs(xp):
    # No overflow warning (warnings are errors for nn.*), exact limits, dtype kept.
    x = as_xp(xp, [-1000.0, -40.0, 0.0, 40.0, 1000.0], numpy.float32)
    out = sigmoid(x)
    assert out.dtype == numpy.float32
    values = backend.to_numpy(out)
    assert values[0] == 0.0 and values[-1] == 1.0 and values[2] == 0.5
    assert numpy.all(numpy.isfinite(values))


@pytest.mark.parametrize("name", ["relu", "relu6", "sigmoid", "tanh"])
def test_activation_gradients(xp, name):
    # Inputs avoid the kinks, and saturation (where finite differences lose precision).
    forward, backward, kinks, high = {
        "relu": (relu_forward, relu_backward, [0.0], 3),
        "relu6": (relu6_forward, relu6_backward, [0.0, 6.0], 9),
        "sigmoid": (sigmoid_forward, sigmoid_backward, [], 3),
        "tanh": (tanh_forward, tanh_backward, [], 3),
    }[name]
    gen = numpy.random.default_rng(1)
    x = as_xp(xp, away_from(gen.uniform(-3, high, size=(4, 5)), kinks))
    dout = as_xp(xp, gen.standard_normal((4, 5)))
    _, cache = forward(x)
    dx = backward(dout, cache)
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: forward(v)[0], x, dout)) < TOL


def test_dropout_train_statistics_and_mask(xp):
    x = as_xp(xp, numpy.ones((200, 100)))
    out, (_, mask) = dropout_forward(x, {"p": 0.3, "mode": "train", "seed": 0})
    values = backend.to_numpy(out)
    dropped = numpy.mean(values == 0)
    assert abs(dropped - 0.3) < 0.02                      # p is the DROP probability
    assert numpy.allclose(values[values != 0], 1 / 0.7)   # survivors scaled up
    assert abs(values.mean() - 1.0) < 0.03                # expectation kept
    again, _ = dropout_forward(x, {"p": 0.3, "mode": "train", "seed": 0})
    assert numpy.array_equal(values, backend.to_numpy(again))


def test_dropout_test_mode_is_identity(xp):
    x = as_xp(xp, numpy.arange(6.0).reshape(2, 3))
    out, cache = dropout_forward(x, {"p": 0.5, "mode": "test"})
    assert numpy.array_equal(backend.to_numpy(out), backend.to_numpy(x))
    dout = as_xp(xp, numpy.full((2, 3), 2.0))
    assert numpy.array_equal(backend.to_numpy(dropout_backward(dout, cache)), numpy.full((2, 3), 2.0))


@pytest.mark.parametrize("mode", ["train", "test"])
def test_dropout_gradient(xp, mode):
    gen = numpy.random.default_rng(2)
    x = as_xp(xp, gen.standard_normal((5, 6)))
    dout = as_xp(xp, gen.standard_normal((5, 6)))
    param = {"p": 0.4, "mode": mode, "seed": 123}   # fixed seed: the same mask on every call
    _, cache = dropout_forward(x, param)
    dx = dropout_backward(dout, cache)
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: dropout_forward(v, param)[0], x, dout)) < TOL


def test_dropout_bad_options(xp):
    x = as_xp(xp, numpy.ones(3))
    with pytest.raises(ValueError, match=r"dropout_forward: p .* \[0, 1\), got 1"):
        dropout_forward(x, {"p": 1, "mode": "train"})
    with pytest.raises(ValueError, match="dropout_forward: mode"):
        dropout_forward(x, {"p": 0.5, "mode": "eval"})
