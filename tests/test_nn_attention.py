"""Soft attention: values by hand, gradient checks of every input (incl. dalpha and the
precomputed-projection path), equality of the two paths, bad input."""
import math

import numpy
import pytest

from nn import attention, backend
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from tests.conftest import as_xp

SINGLE_OP_TOL = 1e-7
# The error is elementwise and relative, so a gradient entry near 1e-6 carries the finite
# difference's roundoff (~1e-11) as a relative error near 1e-5. The seeds of the gradient
# checks below give inputs whose gradients have no such tiny entries (margin ~100x on NumPy,
# so that CuPy's different rounding passes too).


def randn(xp, gen, *shape, scale=1.0):
    return as_xp(xp, gen.standard_normal(shape) * scale)


def make_inputs(xp, seed, N=2, L=5, D=4, H=3, A=6):
    gen = numpy.random.default_rng(seed)
    return gen, dict(features=randn(xp, gen, N, L, D), h=randn(xp, gen, N, H),
                     W_feat=randn(xp, gen, D, A, scale=0.5), W_hidden=randn(xp, gen, H, A, scale=0.5),
                     b=randn(xp, gen, A, scale=0.5), w_score=randn(xp, gen, A))


def test_uniform_scores_give_the_mean_feature(xp):
    # w_score = 0 makes every score 0, so alpha is uniform and the context is the mean feature.
    _, p = make_inputs(xp, 0)
    p["w_score"][...] = 0
    context, alpha, _ = attention.attention_forward(**p)
    L = p["features"].shape[1]
    assert rel_error(alpha, numpy.full((2, L), 1 / L)) < 1e-14
    assert rel_error(context, p["features"].mean(axis=1)) < 1e-14


def test_scores_by_hand(xp):
    # One unit, A = 1: e_l = w * tanh(feature_l * u + h * v + b)
    features = as_xp(xp, [[[1.0], [-1.0], [0.0]]])          # N=1, L=3, D=1
    h = as_xp(xp, [[2.0]])
    W_feat, W_hidden = as_xp(xp, [[0.5]]), as_xp(xp, [[0.25]])
    b, w_score = as_xp(xp, [-0.5]), as_xp(xp, [3.0])
    context, alpha, _ = attention.attention_forward(features, h, W_feat, W_hidden, b, w_score)
    scores = numpy.array([3 * math.tanh(0.5 * f + 0.5 - 0.5) for f in (1.0, -1.0, 0.0)])
    expected_alpha = numpy.exp(scores) / numpy.exp(scores).sum()
    assert rel_error(alpha, expected_alpha[None]) < 1e-14
    assert rel_error(context, [[expected_alpha[0] - expected_alpha[1]]]) < 1e-12


@pytest.mark.parametrize("use_dalpha", [False, True])
def test_attention_gradients(xp, use_dalpha):
    gen, p = make_inputs(xp, 10)
    context, alpha, cache = attention.attention_forward(**p)
    dcontext = randn(xp, gen, *context.shape)
    dalpha = randn(xp, gen, *alpha.shape) if use_dalpha else None
    names = ["features", "h", "W_feat", "W_hidden", "b", "w_score"]
    analytic = dict(zip(names, attention.attention_backward(dcontext, dalpha, cache)))

    def forward():
        context, alpha, _ = attention.attention_forward(**p)
        return xp.concatenate([context, alpha], axis=1) if use_dalpha else context
    dout = xp.concatenate([dcontext, dalpha], axis=1) if use_dalpha else dcontext
    for name in names:
        numeric = eval_numerical_gradient_array(lambda _: forward(), p[name], dout)
        err = rel_error(analytic[name], numeric)
        assert err < SINGLE_OP_TOL, f"d{name}: {err:.2e}"


def test_projected_path_equals_full_op_and_its_gradients(xp):
    gen, p = make_inputs(xp, 42)
    projected, project_cache = attention.attention_project_forward(p["features"], p["W_feat"], p["b"])
    context, alpha, step_cache = attention.attention_step_forward(
        p["features"], projected, p["h"], p["W_hidden"], p["w_score"])
    context_full, alpha_full, full_cache = attention.attention_forward(**p)
    assert rel_error(context, context_full) < 1e-14 and rel_error(alpha, alpha_full) < 1e-14

    dcontext, dalpha = randn(xp, gen, *context.shape), randn(xp, gen, *alpha.shape)
    step_names = ["features", "projected", "h", "W_hidden", "w_score"]
    step_grads = dict(zip(step_names, attention.attention_step_backward(dcontext, dalpha, step_cache)))
    step_inputs = dict(features=p["features"], projected=projected, h=p["h"],
                       W_hidden=p["W_hidden"], w_score=p["w_score"])

    def step_forward():
        context, alpha, _ = attention.attention_step_forward(**step_inputs)
        return xp.concatenate([context, alpha], axis=1)
    both = xp.concatenate([dcontext, dalpha], axis=1)
    for name in step_names:
        numeric = eval_numerical_gradient_array(lambda _: step_forward(), step_inputs[name], both)
        assert rel_error(step_grads[name], numeric) < SINGLE_OP_TOL, name

    # projection backward, and project + step backward == the full backward
    dprojected = step_grads["projected"]
    dfeatures_proj, dW_feat, db = attention.attention_project_backward(dprojected, project_cache)
    project_inputs = dict(features=p["features"], W_feat=p["W_feat"], b=p["b"])
    for name, grad in zip(["features", "W_feat", "b"], [dfeatures_proj, dW_feat, db]):
        numeric = eval_numerical_gradient_array(
            lambda _: attention.attention_project_forward(**project_inputs)[0],
            project_inputs[name], dprojected)
        assert rel_error(grad, numeric) < SINGLE_OP_TOL, name
    full = attention.attention_backward(dcontext, dalpha, full_cache)
    assert rel_error(full[0], step_grads["features"] + dfeatures_proj) < 1e-12
    for got, want in zip(full[1:], [step_grads["h"], dW_feat, step_grads["W_hidden"], db,
                                    step_grads["w_score"]]):
        assert rel_error(got, want) < 1e-12


def test_projection_reused_over_steps_accumulates_like_separate_calls(xp):
    # A decoder projects once and sums dprojected over its steps; that must equal
    # summing the full op's gradients over the same steps.
    gen, p = make_inputs(xp, 3)
    hs = [randn(xp, gen, *p["h"].shape) for _ in range(3)]
    dcontexts = [randn(xp, gen, 2, 4) for _ in range(3)]
    projected, project_cache = attention.attention_project_forward(p["features"], p["W_feat"], p["b"])
    dprojected_sum = xp.zeros_like(projected)
    dfeatures_sum = xp.zeros_like(p["features"])
    dW_feat_full = xp.zeros_like(p["W_feat"])
    dfeatures_full = xp.zeros_like(p["features"])
    for h, dcontext in zip(hs, dcontexts):
        _, _, cache = attention.attention_step_forward(p["features"], projected, h, p["W_hidden"],
                                                       p["w_score"])
        dfeatures, dprojected, *_ = attention.attention_step_backward(dcontext, None, cache)
        dprojected_sum += dprojected
        dfeatures_sum += dfeatures
        full = attention.attention_backward(dcontext, None, attention.attention_forward(
            p["features"], h, p["W_feat"], p["W_hidden"], p["b"], p["w_score"])[2])
        dfeatures_full += full[0]
        dW_feat_full += full[2]
    dfeatures_proj, dW_feat, _ = attention.attention_project_backward(dprojected_sum, project_cache)
    assert rel_error(dfeatures_sum + dfeatures_proj, dfeatures_full) < 1e-12
    assert rel_error(dW_feat, dW_feat_full) < 1e-12


def test_step_backward_without_dfeatures_gives_the_same_other_gradients(xp):
    gen, p = make_inputs(xp, 6)
    projected, _ = attention.attention_project_forward(p["features"], p["W_feat"], p["b"])
    _, alpha, cache = attention.attention_step_forward(p["features"], projected, p["h"],
                                                       p["W_hidden"], p["w_score"])
    dcontext, dalpha = randn(xp, gen, 2, 4), randn(xp, gen, *alpha.shape)
    full = attention.attention_step_backward(dcontext, dalpha, cache)
    lean = attention.attention_step_backward(dcontext, dalpha, cache, with_dfeatures=False)
    assert lean[0] is None
    for got, want in zip(lean[1:], full[1:]):
        assert rel_error(got, want) == 0


def test_attention_keeps_float32(xp):
    _, p = make_inputs(xp, 4)
    p = {k: v.astype(xp.float32) for k, v in p.items()}
    context, alpha, cache = attention.attention_forward(**p)
    grads = attention.attention_backward(xp.ones_like(context), None, cache)
    assert context.dtype == alpha.dtype == numpy.float32
    assert all(g.dtype == numpy.float32 for g in grads)


def test_attention_bad_input(xp):
    _, p = make_inputs(xp, 5)
    bad = dict(p, h=p["h"][:1])
    with pytest.raises(ValueError, match=r"attention_step_forward: h must have shape \(2, 3\)"):
        attention.attention_forward(**bad)
    bad = dict(p, W_feat=p["W_feat"][:3])
    with pytest.raises(ValueError, match=r"attention_project_forward: W_feat must have shape \(4, 6\)"):
        attention.attention_forward(**bad)
    bad = dict(p, w_score=p["w_score"][:2])
    with pytest.raises(ValueError, match=r"w_score must have shape \(6,\)"):
        attention.attention_forward(**bad)
    bad = dict(p, features=p["features"][:, 0])
    with pytest.raises(ValueError, match=r"features must be 3-D \(N, L, D\)"):
        attention.attention_forward(**bad)
    bad = dict(p, h=p["h"].astype(xp.float32))
    with pytest.raises(TypeError, match="share one dtype"):
        attention.attention_forward(**bad)
    context, alpha, cache = attention.attention_forward(**p)
    with pytest.raises(ValueError, match=r"attention_step_backward: dalpha must have shape \(2, 5\)"):
        attention.attention_backward(context, alpha[:, :2], cache)
    with pytest.raises(ValueError, match=r"dcontext must have shape \(2, 4\)"):
        attention.attention_backward(alpha, None, cache)


def test_gate_by_hand_gradients_and_out_buffer(xp):
    """beta = sigmoid(h W_beta + b_beta) scales each example's context; gradients by finite differences."""
    gen = numpy.random.default_rng(11)
    context, h = randn(xp, gen, 3, 4), randn(xp, gen, 3, 2)
    W_beta, b_beta = randn(xp, gen, 2, 1), randn(xp, gen, 1)
    gated, cache = attention.attention_gate_forward(context, h, W_beta, b_beta)
    beta = 1 / (1 + numpy.exp(-backend.to_numpy(h @ W_beta + b_beta)))
    assert rel_error(gated, beta * backend.to_numpy(context)) < 1e-14
    out = xp.zeros((2, 3, 4))                                 # e.g. a buffer of all steps' gated contexts
    attention.attention_gate_forward(context, h, W_beta, b_beta, out=out[1])
    assert rel_error(out[1], gated) == 0 and float(abs(out[0]).max()) == 0

    dgated = randn(xp, gen, 3, 4)
    inputs = dict(context=context, h=h, W_beta=W_beta, b_beta=b_beta)
    analytic = dict(zip(inputs, attention.attention_gate_backward(dgated, cache)))
    for name, array in inputs.items():
        numeric = eval_numerical_gradient_array(lambda _: attention.attention_gate_forward(**inputs)[0],
                                                array, dgated)
        assert rel_error(analytic[name], numeric) < SINGLE_OP_TOL, name
    with pytest.raises(ValueError, match=r"attention_gate_forward: W_beta must have shape \(2, 1\)"):
        attention.attention_gate_forward(context, h, W_beta.T, b_beta)
    with pytest.raises(ValueError, match=r"attention_gate_backward: dgated must have shape \(3, 4\)"):
        attention.attention_gate_backward(dgated[:, :2], cache)
