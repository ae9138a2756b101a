"""Softmax, log-softmax and the two cross-entropy losses: values by hand, gradients, bad input."""
import math

import numpy
import pytest

from nn import backend, losses
from nn.gradcheck import eval_numerical_gradient, rel_error
from tests.conftest import as_xp


def test_softmax_of_known_vector(xp):
    x = as_xp(xp, [[0.0, math.log(2.0), math.log(5.0)]])
    probs = losses.softmax(x)
    assert rel_error(probs, numpy.array([[1 / 8, 2 / 8, 5 / 8]])) < 1e-12
    log_probs = losses.log_softmax(x)
    assert rel_error(log_probs, numpy.log([[1 / 8, 2 / 8, 5 / 8]])) < 1e-12


def test_softmax_is_stable_for_huge_scores_and_keeps_dtype(xp):
    x = as_xp(xp, [[1000.0, 1000.0], [-1000.0, 0.0]], numpy.float32)
    probs = losses.softmax(x)
    assert probs.dtype == numpy.float32
    assert rel_error(probs, numpy.array([[0.5, 0.5], [0.0, 1.0]])) < 1e-6
    assert numpy.isfinite(backend.to_numpy(losses.log_softmax(x))).all()


def test_softmax_along_other_axis(xp):
    x = as_xp(xp, numpy.random.default_rng(0).standard_normal((3, 4, 5)))
    probs = losses.softmax(x, axis=1)
    assert rel_error(probs.sum(axis=1), numpy.ones((3, 5))) < 1e-12
    assert rel_error(xp.exp(losses.log_softmax(x, axis=1)), probs) < 1e-12


def test_softmax_loss_by_hand(xp):
    # Uniform scores over C classes: loss = log C, dx = (1/C - onehot) / N.
    x = as_xp(xp, numpy.zeros((2, 4)))
    y = xp.asarray([1, 3])
    loss, dx = losses.softmax_loss(x, y)
    assert abs(loss - math.log(4)) < 1e-12
    expected = numpy.full((2, 4), 0.25)
    expected[0, 1] -= 1
    expected[1, 3] -= 1
    assert rel_error(dx, expected / 2) < 1e-12


def test_softmax_loss_of_an_empty_batch(xp):
    loss, dx = losses.softmax_loss(as_xp(xp, numpy.zeros((0, 4))), xp.zeros(0, dtype=numpy.int64))
    assert loss == 0.0 and dx.shape == (0, 4)


def test_softmax_loss_gradient(xp):
    gen = numpy.random.default_rng(1)
    x = as_xp(xp, gen.standard_normal((6, 5)))
    y = xp.asarray(gen.integers(0, 5, size=6))
    loss, dx = losses.softmax_loss(x, y)
    dx_num = eval_numerical_gradient(lambda: losses.softmax_loss(x, y)[0], x)
    assert rel_error(dx, dx_num) < 1e-7
    assert loss > 0


def test_temporal_softmax_loss_with_mask_by_hand(xp):
    # N=2 sequences, T=2 steps, V=2 words. Scores (0, log 3) give p = (1/4, 3/4).
    x = as_xp(xp, [[[0.0, math.log(3)], [0.0, 0.0]],
                   [[0.0, math.log(3)], [5.0, -5.0]]])
    y = xp.asarray([[0, 1], [1, 0]])
    mask = xp.asarray([[True, True], [True, False]])
    loss, dx = losses.temporal_softmax_loss(x, y, mask)
    expected_loss = (-math.log(1 / 4) - math.log(1 / 2) - math.log(3 / 4)) / 2
    assert abs(loss - expected_loss) < 1e-12
    expected_dx = numpy.array([[[1 / 4 - 1, 3 / 4], [1 / 2, 1 / 2 - 1]],
                               [[1 / 4, 3 / 4 - 1], [0.0, 0.0]]]) / 2
    assert rel_error(dx, expected_dx) < 1e-12


@pytest.mark.parametrize("mask_kind", ["all", "random", "none"])
def test_temporal_softmax_loss_gradient(xp, mask_kind):
    gen = numpy.random.default_rng(25)   # no near-zero gradient entries: margin for CuPy rounding
    N, T, V = 3, 4, 6
    x = as_xp(xp, gen.standard_normal((N, T, V)))
    y = xp.asarray(gen.integers(0, V, size=(N, T)))
    mask_np = {"all": numpy.ones((N, T), bool), "none": numpy.zeros((N, T), bool),
               "random": gen.random((N, T)) > 0.4}[mask_kind]
    mask = xp.asarray(mask_np)
    loss, dx = losses.temporal_softmax_loss(x, y, mask)
    dx_num = eval_numerical_gradient(lambda: losses.temporal_softmax_loss(x, y, mask)[0], x)
    assert rel_error(dx, dx_num) < 1e-7
    if mask_kind == "none":
        assert loss == 0.0
    # The loss equals the per-token cross-entropy summed over kept tokens, divided by N.
    log_probs = backend.to_numpy(losses.log_softmax(x))
    y_np = backend.to_numpy(y)
    picked = numpy.take_along_axis(log_probs, y_np[..., None], axis=2)[..., 0]
    assert abs(loss - float(-(picked * mask_np).sum() / N)) < 1e-10


def test_temporal_softmax_loss_keeps_float32(xp):
    x = as_xp(xp, numpy.zeros((2, 3, 4)), numpy.float32)
    loss, dx = losses.temporal_softmax_loss(x, xp.zeros((2, 3), dtype=xp.int64),
                                            xp.ones((2, 3), dtype=bool))
    assert dx.dtype == numpy.float32
    assert abs(loss - 3 * math.log(4)) < 1e-5


def test_bad_labels_and_masks_raise(xp):
    x = as_xp(xp, numpy.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"softmax_loss: labels y must have shape \(2,\)"):
        losses.softmax_loss(x, xp.zeros(3, dtype=xp.int64))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        losses.softmax_loss(x, xp.asarray([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        losses.softmax_loss(x, xp.asarray([-1, 0]))
    with pytest.raises(TypeError, match="labels y must be integers"):
        losses.softmax_loss(x, xp.zeros(2))
    with pytest.raises(ValueError, match=r"must have shape \(N, C\)"):
        losses.softmax_loss(xp.zeros((2, 3, 1)), xp.zeros(2, dtype=xp.int64))

    x3 = as_xp(xp, numpy.zeros((2, 3, 4)))
    y3 = xp.zeros((2, 3), dtype=xp.int64)
    with pytest.raises(ValueError, match=r"temporal_softmax_loss: mask must have shape \(2, 3\)"):
        losses.temporal_softmax_loss(x3, y3, xp.ones((3, 2), dtype=bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        losses.temporal_softmax_loss(x3, y3, xp.ones((2, 3)))
    with pytest.raises(ValueError, match=r"labels y must have shape \(2, 3\)"):
        losses.temporal_softmax_loss(x3, xp.zeros((2, 4), dtype=xp.int64), xp.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"must have shape \(N, T, V\)"):
        losses.temporal_softmax_loss(x, xp.zeros(2, dtype=xp.int64), xp.ones(2, dtype=bool))


def test_backend_mix_raises():
    cupy = pytest.importorskip("cupy")
    if not backend.cupy_available():
        pytest.skip("no GPU visible")
    with pytest.raises(TypeError, match="mixed"):
        losses.softmax_loss(numpy.zeros((2, 3)), cupy.zeros(2, dtype=cupy.int64))
