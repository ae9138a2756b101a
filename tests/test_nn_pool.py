"""Pooling: known arrays, a loop reference, gradient checks for tiled and overlapping windows, bad input."""
import numpy
import pytest

from conftest import as_xp
from nn import backend
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from nn.pool import (
    avg_pool_backward, avg_pool_forward, global_avg_pool_backward, global_avg_pool_forward,
    max_pool_backward, max_pool_forward,
)

TOL = 1e-7

# (N, C, H, W, pool_height, pool_width, stride): tiled (reshape path), overlapping,
# rectangular, leftover rows/columns, stride larger than the window.
SHAPES = [
    (2, 3, 4, 6, 2, 2, 2),
    (2, 2, 5, 5, 3, 3, 2),
    (1, 2, 4, 5, 2, 3, 1),
    (2, 2, 5, 7, 2, 2, 2),
    (1, 3, 7, 6, 2, 1, 3),
]
IDS = [f"{s[4]}x{s[5]}-s{s[6]}-in{s[2]}x{s[3]}" for s in SHAPES]


def pool_reference(x, ph, pw, stride, reduce):
    """Loops over every output pixel (the definition)."""
    n, c, h, w = x.shape
    h_out, w_out = (h - ph) // stride + 1, (w - pw) // stride + 1
    out = numpy.zeros((n, c, h_out, w_out))
    for i in range(h_out):
        for j in range(w_out):
            out[:, :, i, j] = reduce(x[:, :, i * stride:i * stride + ph, j * stride:j * stride + pw], axis=(2, 3))
    return out


def distinct_values(shape, seed):
    """Random values with no near-ties (so max pooling is differentiable at them)."""
    gen = numpy.random.default_rng(seed)
    return gen.permutation(numpy.prod(shape)).reshape(shape) * 0.1 + gen.uniform(0, 0.01, shape)


def param(shape):
    return {"pool_height": shape[4], "pool_width": shape[5], "stride": shape[6]}


def test_max_pool_known_array(xp):
    x = as_xp(xp, numpy.arange(16.0).reshape(1, 1, 4, 4))
    out, _ = max_pool_forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert numpy.array_equal(backend.to_numpy(out), [[[[5.0, 7.0], [13.0, 15.0]]]])
    out, _ = max_pool_forward(x, {"pool_height": 3, "pool_width": 3, "stride": 1})   # overlapping
    assert numpy.array_equal(backend.to_numpy(out), [[[[10.0, 11.0], [14.0, 15.0]]]])


def test_avg_and_global_pool_known_array(xp):
    x = as_xp(xp, numpy.arange(16.0).reshape(1, 1, 4, 4))
    out, _ = avg_pool_forward(x, {"pool_height": 2, "pool_width": 2, "stride": 2})
    assert numpy.allclose(backend.to_numpy(out), [[[[2.5, 4.5], [10.5, 12.5]]]])
    out, _ = global_avg_pool_forward(x)
    assert numpy.allclose(backend.to_numpy(out), [[7.5]])


def test_max_pool_tie_sends_gradient_to_first_maximum(xp):
    x = as_xp(xp, numpy.zeros((1, 1, 2, 4)))        # e.g. after a ReLU
    for p in ({"pool_height": 2, "pool_width": 2, "stride": 2}, {"pool_height": 2, "pool_width": 2, "stride": 1}):
        out, cache = max_pool_forward(x, p)
        dx = backend.to_numpy(max_pool_backward(xp.ones_like(out), cache))
        assert dx.sum() == out.size                  # each window's gradient sent once
    assert numpy.array_equal(dx, [[[[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_pool_forward_matches_loops(xp, shape):
    x = distinct_values(shape[:4], 0)
    ph, pw, stride = shape[4:]
    out, _ = max_pool_forward(as_xp(xp, x), param(shape))
    assert rel_error(out, pool_reference(x, ph, pw, stride, numpy.max)) == 0
    out, _ = avg_pool_forward(as_xp(xp, x), param(shape))
    assert rel_error(out, pool_reference(x, ph, pw, stride, numpy.mean)) < 1e-13


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_gradients(xp, shape, kind):
    forward, backward = {"max": (max_pool_forward, max_pool_backward),
                         "avg": (avg_pool_forward, avg_pool_backward)}[kind]
    x = as_xp(xp, distinct_values(shape[:4], 1))
    out, cache = forward(x, param(shape))
    dout = as_xp(xp, numpy.random.default_rng(2).standard_normal(out.shape))
    dx = backward(dout, cache)
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: forward(v, param(shape))[0], x, dout)) < TOL


def test_global_avg_pool_gradient(xp):
    gen = numpy.random.default_rng(3)
    x = as_xp(xp, gen.standard_normal((2, 3, 3, 4)))
    dout = as_xp(xp, gen.standard_normal((2, 3)))
    out, cache = global_avg_pool_forward(x)
    dx = global_avg_pool_backward(dout, cache)
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: global_avg_pool_forward(v)[0], x, dout)) < TOL


def test_pool_keeps_float32(xp):
    x = as_xp(xp, distinct_values((1, 2, 5, 5), 4), numpy.float32)
    for forward, backward in ((max_pool_forward, max_pool_backward), (avg_pool_forward, avg_pool_backward)):
        out, cache = forward(x, {"pool_height": 3, "pool_width": 3, "stride": 2})
        assert out.dtype == numpy.float32 and backward(out, cache).dtype == numpy.float32
    out, cache = global_avg_pool_forward(x)
    assert out.dtype == numpy.float32 and global_avg_pool_backward(out, cache).dtype == numpy.float32


def test_pool_and_conv_accept_numpy_integers(xp):
    from nn.conv import conv_forward
    x = as_xp(xp, numpy.arange(32.0).reshape(1, 2, 4, 4))
    two = numpy.int64(2)
    out, _ = max_pool_forward(x, {"pool_height": two, "pool_width": two, "stride": two})
    assert out.shape == (1, 2, 2, 2)
    w = as_xp(xp, numpy.ones((2, 2, 3, 3)))
    out, _ = conv_forward(x, w, None, {"stride": numpy.int32(1), "pad": numpy.int64(1), "groups": numpy.int64(1)})
    assert out.shape == (1, 2, 4, 4)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        conv_forward(x, w, None, {"stride": True})


def test_pool_bad_input(xp):
    x = as_xp(xp, numpy.zeros((1, 2, 4, 4)))
    with pytest.raises(ValueError, match=r"max_pool_forward: pool_param needs .* missing \['stride'\]"):
        max_pool_forward(x, {"pool_height": 2, "pool_width": 2})
    with pytest.raises(ValueError, match=r"avg_pool_forward: a 5x2 pooling window does not fit the input 4x4"):
        avg_pool_forward(x, {"pool_height": 5, "pool_width": 2, "stride": 1})
    with pytest.raises(ValueError, match="max_pool_forward: stride must be a positive int, got 0"):
        max_pool_forward(x, {"pool_height": 2, "pool_width": 2, "stride": 0})
    with pytest.raises(ValueError, match=r"max_pool_forward: x must be 4-D \(N, C, H, W\), got shape \(2, 4, 4\)"):
        max_pool_forward(x[0], {"pool_height": 2, "pool_width": 2, "stride": 2})
    with pytest.raises(ValueError, match=r"global_avg_pool_forward: x must be 4-D"):
        global_avg_pool_forward(x[0])
    with pytest.raises(TypeError, match="max_pool_forward: x must be a floating-point array"):
        max_pool_forward(x.astype(numpy.int32), {"pool_height": 2, "pool_width": 2, "stride": 2})
