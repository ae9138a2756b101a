"""Batch normalization: known values, running statistics, eval mode, gradient checks, bad input."""
import numpy
import pytest

from conftest import as_xp
from nn import backend
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from nn.normalization import (
    batchnorm_backward, batchnorm_forward, spatial_batchnorm_backward, spatial_batchnorm_forward,
)

TOL = 1e-7


def test_batchnorm_normalises_a_known_column(xp):
    x = as_xp(xp, [[1.0, 10.0], [2.0, 10.0], [3.0, 10.0], [4.0, 10.0]])
    gamma = as_xp(xp, [2.0, 1.0])
    beta = as_xp(xp, [1.0, -3.0])
    out, _ = batchnorm_forward(x, gamma, beta, {"mode": "train", "eps": 0.0 + 1e-12})
    # column 0: mean 2.5, variance 1.25 -> (x - 2.5) / sqrt(1.25) = +-1.3416, +-0.4472
    z = numpy.array([-1.5, -0.5, 0.5, 1.5]) / numpy.sqrt(1.25)
    assert numpy.allclose(backend.to_numpy(out)[:, 0], 2 * z + 1)
    # column 1 is constant: normalised to 0, so the output is beta
    assert numpy.allclose(backend.to_numpy(out)[:, 1], -3.0)


def test_running_statistics(xp):
    x = as_xp(xp, [[1.0, 0.0], [3.0, 4.0]])         # mean [2, 2], biased var [1, 4]
    gamma, beta = as_xp(xp, [1.0, 1.0]), as_xp(xp, [0.0, 0.0])
    param = {"mode": "train", "momentum": 0.9}
    batchnorm_forward(x, gamma, beta, param)         # created from zero, as CS231n
    assert numpy.allclose(backend.to_numpy(param["running_mean"]), [0.2, 0.2])
    assert numpy.allclose(backend.to_numpy(param["running_var"]), [0.1, 0.4])
    running_mean, running_var = as_xp(xp, [1.0, 1.0]), as_xp(xp, [1.0, 1.0])
    param = {"mode": "train", "momentum": 0.5, "running_mean": running_mean, "running_var": running_var}
    batchnorm_forward(x, gamma, beta, param)
    assert param["running_mean"] is running_mean     # updated in place
    assert numpy.allclose(backend.to_numpy(running_mean), [1.5, 1.5])
    assert numpy.allclose(backend.to_numpy(running_var), [1.0, 2.5])


def test_spatial_eval_mode_is_the_exact_affine_map(xp):
    gen = numpy.random.default_rng(0)
    x = gen.standard_normal((2, 3, 4, 5))
    gamma, beta = gen.standard_normal(3), gen.standard_normal(3)
    mean, var = gen.standard_normal(3), gen.uniform(0.1, 2.0, 3)
    param = {"mode": "test", "eps": 1e-3, "running_mean": as_xp(xp, mean), "running_var": as_xp(xp, var)}
    out, _ = spatial_batchnorm_forward(as_xp(xp, x), as_xp(xp, gamma), as_xp(xp, beta), param)
    c = (slice(None), None, None)
    expected = gamma[c] * (x - mean[c]) / numpy.sqrt(var[c] + 1e-3) + beta[c]
    assert rel_error(out, expected) < 1e-13
    assert numpy.allclose(backend.to_numpy(param["running_mean"]), mean)   # untouched


def test_spatial_train_equals_batchnorm_over_pixels(xp):
    gen = numpy.random.default_rng(1)
    x = gen.standard_normal((3, 4, 2, 5))
    gamma, beta = gen.standard_normal(4), gen.standard_normal(4)
    spatial_param, flat_param = {"mode": "train"}, {"mode": "train"}
    out, _ = spatial_batchnorm_forward(as_xp(xp, x), as_xp(xp, gamma), as_xp(xp, beta), spatial_param)
    flat = x.transpose(0, 2, 3, 1).reshape(-1, 4)
    flat_out, _ = batchnorm_forward(as_xp(xp, flat), as_xp(xp, gamma), as_xp(xp, beta), flat_param)
    assert rel_error(out, backend.to_numpy(flat_out).reshape(3, 2, 5, 4).transpose(0, 3, 1, 2)) < 1e-12
    assert rel_error(spatial_param["running_var"], flat_param["running_var"]) < 1e-12


def _gradient_check(xp, forward, backward, shape, mode):
    gen = numpy.random.default_rng(2)
    features = shape[1]
    x = as_xp(xp, 3 * gen.standard_normal(shape) + 1)
    gamma = as_xp(xp, gen.standard_normal(features))
    beta = as_xp(xp, gen.standard_normal(features))
    dout = as_xp(xp, gen.standard_normal(shape))
    param = {"mode": mode, "eps": 1e-3, "running_mean": as_xp(xp, gen.standard_normal(features)),
             "running_var": as_xp(xp, gen.uniform(0.5, 2.0, features))}
    out, cache = forward(x, gamma, beta, param)
    dx, dgamma, dbeta = backward(dout, cache)
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: forward(v, gamma, beta, param)[0], x, dout)) < TOL
    assert rel_error(dgamma, eval_numerical_gradient_array(
        lambda v: forward(x, v, beta, param)[0], gamma, dout)) < TOL
    assert rel_error(dbeta, eval_numerical_gradient_array(
        lambda v: forward(x, gamma, v, param)[0], beta, dout)) < TOL


@pytest.mark.parametrize("mode", ["train", "test"])
def test_batchnorm_gradients(xp, mode):
    _gradient_check(xp, batchnorm_forward, batchnorm_backward, (6, 4), mode)


@pytest.mark.parametrize("mode", ["train", "test"])
def test_spatial_batchnorm_gradients(xp, mode):
    _gradient_check(xp, spatial_batchnorm_forward, spatial_batchnorm_backward, (2, 3, 3, 4), mode)


def test_batchnorm_keeps_float32(xp):
    x = as_xp(xp, numpy.random.default_rng(3).standard_normal((2, 3, 4, 4)), numpy.float32)
    gamma, beta = as_xp(xp, numpy.ones(3), numpy.float32), as_xp(xp, numpy.zeros(3), numpy.float32)
    for mode in ("train", "test"):
        param = {"mode": mode, "running_mean": as_xp(xp, numpy.zeros(3), numpy.float32),
                 "running_var": as_xp(xp, numpy.ones(3), numpy.float32)}
        out, cache = spatial_batchnorm_forward(x, gamma, beta, param)
        assert out.dtype == numpy.float32
        assert all(g.dtype == numpy.float32 for g in spatial_batchnorm_backward(out, cache))


def test_batchnorm_bad_input(xp):
    x = as_xp(xp, numpy.ones((4, 3)))
    ones3 = as_xp(xp, numpy.ones(3))
    with pytest.raises(ValueError, match=r"batchnorm_forward: gamma must have shape \(3,\), got \(2,\)"):
        batchnorm_forward(x, as_xp(xp, numpy.ones(2)), ones3, {"mode": "train"})
    with pytest.raises(ValueError, match=r"batchnorm_forward: x must be 2-D \(N, D\), got shape \(4, 3, 1\)"):
        batchnorm_forward(x.reshape(4, 3, 1), ones3, ones3, {"mode": "train"})
    with pytest.raises(ValueError, match=r"spatial_batchnorm_forward: x must be 4-D"):
        spatial_batchnorm_forward(x, ones3, ones3, {"mode": "train"})
    with pytest.raises(ValueError, match="batchnorm_forward: bn_param\\['mode'\\] must be 'train' or 'test'"):
        batchnorm_forward(x, ones3, ones3, {"mode": "eval"})
    with pytest.raises(ValueError, match="batchnorm_forward: mode 'test' needs"):
        batchnorm_forward(x, ones3, ones3, {"mode": "test"})
    with pytest.raises(ValueError, match=r"bn_param\['running_var'\] must have shape \(3,\)"):
        batchnorm_forward(x, ones3, ones3, {"mode": "test", "running_mean": ones3,
                                            "running_var": as_xp(xp, numpy.ones(4))})
