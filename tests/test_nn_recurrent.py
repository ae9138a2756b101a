"""Word embedding, RNN, LSTM and temporal affine: hand-computed values, gradient checks,
the fast sequence functions against loops over the step functions, bad input."""
import math

import numpy
import pytest

from nn import backend, recurrent
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from tests.conftest import as_xp

SINGLE_OP_TOL = 1e-7
CHAIN_TOL = 1e-5
# rel_error is elementwise: a gradient entry near 1e-6 turns the finite difference's
# roundoff (~1e-11) into a relative error near 1e-5. Seeds are chosen so that the checked
# gradients have no such tiny entries (margin >= 10x on NumPy; CuPy rounds differently).


def randn(xp, gen, *shape, scale=1.0):
    return as_xp(xp, gen.standard_normal(shape) * scale)


def check_grads(forward, inputs, analytic, dout, tol):
    """For each named input, compare the analytic gradient with sum(forward() * dout)'s numerical one."""
    for name, array in inputs.items():
        numeric = eval_numerical_gradient_array(lambda _: forward(), array, dout)
        err = rel_error(analytic[name], numeric)
        assert err < tol, f"d{name}: relative error {err:.2e} >= {tol:.0e}"


# ---------------------------------------------------------------- word embedding

def test_word_embedding_forward_by_hand_and_backward_accumulates(xp):
    W = as_xp(xp, [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    x = xp.asarray([[2, 0], [2, 2]])
    out, cache = recurrent.word_embedding_forward(x, W)
    assert rel_error(out, numpy.array([[[4, 5], [0, 1]], [[4, 5], [4, 5]]])) == 0
    dout = as_xp(xp, numpy.arange(8).reshape(2, 2, 2))
    dW = recurrent.word_embedding_backward(dout, cache)
    # word 2 is used three times: its gradient is the sum of three upstream rows
    assert rel_error(dW, numpy.array([[2, 3], [0, 0], [0 + 4 + 6, 1 + 5 + 7]])) == 0


def test_word_embedding_gradient(xp):
    gen = numpy.random.default_rng(0)
    x = xp.asarray(gen.integers(0, 5, size=(3, 4)))
    W = randn(xp, gen, 5, 3)
    dout = randn(xp, gen, 3, 4, 3)
    _, cache = recurrent.word_embedding_forward(x, W)
    dW = recurrent.word_embedding_backward(dout, cache)
    check_grads(lambda: recurrent.word_embedding_forward(x, W)[0], {"W": W}, {"W": dW}, dout,
                SINGLE_OP_TOL)


def test_word_embedding_bad_input(xp):
    W = as_xp(xp, numpy.zeros((4, 2)))
    with pytest.raises(TypeError, match="word_embedding_forward: word indices x must be an integer"):
        recurrent.word_embedding_forward(xp.zeros((2, 3)), W)
    with pytest.raises(ValueError, match=r"word indices must lie in \[0, 4\)"):
        recurrent.word_embedding_forward(xp.asarray([[0, 4]]), W)
    with pytest.raises(ValueError, match=r"word indices must lie in \[0, 4\)"):
        recurrent.word_embedding_forward(xp.asarray([[-1, 0]]), W)
    with pytest.raises(ValueError, match=r"x must be 2-D \(N, T\)"):
        recurrent.word_embedding_forward(xp.asarray([0, 1]), W)
    with pytest.raises(TypeError, match="W must be a floating-point"):
        recurrent.word_embedding_forward(xp.asarray([[0, 1]]), xp.zeros((4, 2), dtype=xp.int64))


# ---------------------------------------------------------------- vanilla RNN

def test_rnn_step_forward_by_hand(xp):
    x = as_xp(xp, [[1.0, 2.0]])
    prev_h = as_xp(xp, [[0.5]])
    Wx = as_xp(xp, [[0.1], [0.2]])
    Wh = as_xp(xp, [[2.0]])
    b = as_xp(xp, [-0.5])
    next_h, _ = recurrent.rnn_step_forward(x, prev_h, Wx, Wh, b)
    assert rel_error(next_h, [[math.tanh(0.1 + 0.4 + 1.0 - 0.5)]]) < 1e-14


def rnn_params(xp, gen, N=3, T=4, D=5, H=4, gates=1):
    return (randn(xp, gen, N, T, D), randn(xp, gen, N, H), randn(xp, gen, D, gates * H, scale=0.5),
            randn(xp, gen, H, gates * H, scale=0.5), randn(xp, gen, gates * H, scale=0.5))


def test_rnn_step_gradients(xp):
    gen = numpy.random.default_rng(1)
    x_seq, prev_h, Wx, Wh, b = rnn_params(xp, gen)
    x = xp.ascontiguousarray(x_seq[:, 0])
    next_h, cache = recurrent.rnn_step_forward(x, prev_h, Wx, Wh, b)
    dnext_h = randn(xp, gen, *next_h.shape)
    names = ["x", "prev_h", "Wx", "Wh", "b"]
    analytic = dict(zip(names, recurrent.rnn_step_backward(dnext_h, cache)))
    check_grads(lambda: recurrent.rnn_step_forward(x, prev_h, Wx, Wh, b)[0],
                dict(zip(names, [x, prev_h, Wx, Wh, b])), analytic, dnext_h, SINGLE_OP_TOL)


def test_rnn_forward_equals_step_loop_and_gradients(xp):
    gen = numpy.random.default_rng(2)
    x, h0, Wx, Wh, b = rnn_params(xp, gen)
    h, cache = recurrent.rnn_forward(x, h0, Wx, Wh, b)
    prev_h, steps = h0, []
    for t in range(x.shape[1]):
        prev_h, _ = recurrent.rnn_step_forward(x[:, t], prev_h, Wx, Wh, b)
        steps.append(prev_h)
    assert rel_error(h, xp.stack(steps, axis=1)) < 1e-12

    dh = randn(xp, gen, *h.shape)
    names = ["x", "h0", "Wx", "Wh", "b"]
    analytic = dict(zip(names, recurrent.rnn_backward(dh, cache)))
    check_grads(lambda: recurrent.rnn_forward(x, h0, Wx, Wh, b)[0],
                dict(zip(names, [x, h0, Wx, Wh, b])), analytic, dh, CHAIN_TOL)


# ---------------------------------------------------------------- LSTM

def test_lstm_step_forward_with_known_gates(xp):
    # Zero weights: the gates are set by the bias alone.
    # i = sigmoid(0) = 1/2, f = sigmoid(log 3) = 3/4, o = sigmoid(-log 3) = 1/4, g = tanh(atanh 0.5) = 0.5
    N, D, H = 2, 3, 1
    x = as_xp(xp, numpy.ones((N, D)))
    prev_h = as_xp(xp, numpy.ones((N, H)))
    prev_c = as_xp(xp, [[2.0], [-4.0]])
    Wx = as_xp(xp, numpy.zeros((D, 4 * H)))
    Wh = as_xp(xp, numpy.zeros((H, 4 * H)))
    b = as_xp(xp, [0.0, math.log(3), -math.log(3), math.atanh(0.5)])
    next_h, next_c, _ = recurrent.lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)
    expected_c = numpy.array([[0.75 * 2 + 0.25], [0.75 * -4 + 0.25]])
    assert rel_error(next_c, expected_c) < 1e-14
    assert rel_error(next_h, 0.25 * numpy.tanh(expected_c)) < 1e-14

    # One input weight: x feeds the g block only, so g = tanh(atanh 0.5 + sum x * 0.1).
    Wx[:, 3] = 0.1
    _, next_c, _ = recurrent.lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)
    g = math.tanh(math.atanh(0.5) + 0.3)
    assert rel_error(next_c, numpy.array([[1.5 + 0.5 * g], [-3 + 0.5 * g]])) < 1e-14


def test_lstm_step_gradients(xp):
    gen = numpy.random.default_rng(13)   # no near-zero gradient entries (see SINGLE_OP_TOL)
    x_seq, prev_h, Wx, Wh, b = rnn_params(xp, gen, gates=4)
    x = xp.ascontiguousarray(x_seq[:, 0])
    prev_c = randn(xp, gen, *prev_h.shape)
    next_h, next_c, cache = recurrent.lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)
    dnext_h = randn(xp, gen, *next_h.shape)
    dnext_c = randn(xp, gen, *next_c.shape)
    names = ["x", "prev_h", "prev_c", "Wx", "Wh", "b"]
    analytic = dict(zip(names, recurrent.lstm_step_backward(dnext_h, dnext_c, cache)))
    inputs = dict(zip(names, [x, prev_h, prev_c, Wx, Wh, b]))
    # the loss sees both outputs: sum(next_h * dnext_h) + sum(next_c * dnext_c)
    both = xp.concatenate([dnext_h, dnext_c], axis=1)

    def forward():
        next_h, next_c, _ = recurrent.lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)
        return xp.concatenate([next_h, next_c], axis=1)
    check_grads(forward, inputs, analytic, both, SINGLE_OP_TOL)


def test_lstm_step_from_projection_gradients(xp):
    gen = numpy.random.default_rng(4)
    N, H = 3, 4
    xw = randn(xp, gen, N, 4 * H)
    prev_h, prev_c = randn(xp, gen, N, H), randn(xp, gen, N, H)
    Wh = randn(xp, gen, H, 4 * H, scale=0.5)
    next_h, next_c, cache = recurrent.lstm_step_forward_from_projection(xw, prev_h, prev_c, Wh)
    dnext_h, dnext_c = randn(xp, gen, N, H), randn(xp, gen, N, H)
    names = ["xw", "prev_h", "prev_c", "Wh"]
    analytic = dict(zip(names, recurrent.lstm_step_backward_from_projection(dnext_h, dnext_c, cache)))

    def forward():
        out = recurrent.lstm_step_forward_from_projection(xw, prev_h, prev_c, Wh)
        return xp.concatenate(out[:2], axis=1)
    check_grads(forward, dict(zip(names, [xw, prev_h, prev_c, Wh])), analytic,
                xp.concatenate([dnext_h, dnext_c], axis=1), SINGLE_OP_TOL)


def test_lstm_step_from_projection_equals_readable_step(xp):
    gen = numpy.random.default_rng(14)
    x_seq, prev_h, Wx, Wh, b = rnn_params(xp, gen, N=3, D=5, H=4, gates=4)
    x = xp.ascontiguousarray(x_seq[:, 0])
    prev_c = randn(xp, gen, 3, 4)
    dnext_h, dnext_c = randn(xp, gen, 3, 4), randn(xp, gen, 3, 4)
    next_h, next_c, cache = recurrent.lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)
    dx, dprev_h, dprev_c, dWx, dWh, db = recurrent.lstm_step_backward(dnext_h, dnext_c, cache)

    fast_h, fast_c, fast_cache = recurrent.lstm_step_forward_from_projection(
        x @ Wx + b, prev_h, prev_c, Wh)
    dxw, fast_dprev_h, fast_dprev_c, fast_dWh = recurrent.lstm_step_backward_from_projection(
        dnext_h, dnext_c, fast_cache)
    for got, want in [(fast_h, next_h), (fast_c, next_c), (dxw @ Wx.T, dx), (x.T @ dxw, dWx),
                      (dxw.sum(axis=0), db), (fast_dprev_h, dprev_h), (fast_dprev_c, dprev_c),
                      (fast_dWh, dWh)]:
        assert rel_error(got, want) < 1e-12


def lstm_step_loop(xp, x, h0, Wx, Wh, b, dh):
    """Reference: lstm_forward / lstm_backward as loops over the readable step functions."""
    N, T, _ = x.shape
    prev_h, prev_c = h0, xp.zeros_like(h0)
    hs, caches = [], []
    for t in range(T):
        prev_h, prev_c, cache = recurrent.lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        hs.append(prev_h)
        caches.append(cache)
    dnext_h, dnext_c = xp.zeros_like(h0), xp.zeros_like(h0)
    dWx, dWh, db = xp.zeros_like(Wx), xp.zeros_like(Wh), xp.zeros_like(b)
    dxs = [None] * T
    for t in reversed(range(T)):
        dxs[t], dnext_h, dnext_c, dWx_t, dWh_t, db_t = recurrent.lstm_step_backward(
            dh[:, t] + dnext_h, dnext_c, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return xp.stack(hs, axis=1), (xp.stack(dxs, axis=1), dnext_h, dWx, dWh, db)


def test_lstm_forward_and_backward_equal_step_loop(xp):
    gen = numpy.random.default_rng(5)
    x, h0, Wx, Wh, b = rnn_params(xp, gen, N=4, T=6, D=5, H=3, gates=4)
    h, cache = recurrent.lstm_forward(x, h0, Wx, Wh, b)
    dh = randn(xp, gen, *h.shape)
    grads = recurrent.lstm_backward(dh, cache)
    h_ref, grads_ref = lstm_step_loop(xp, x, h0, Wx, Wh, b, dh)
    assert h.shape == (4, 6, 3)
    assert rel_error(h, h_ref) < 1e-12
    for name, g, g_ref in zip(["dx", "dh0", "dWx", "dWh", "db"], grads, grads_ref):
        assert g.shape == g_ref.shape, name
        assert rel_error(g, g_ref) < 1e-10, name


def test_lstm_backward_can_run_twice_on_one_cache(xp):
    gen = numpy.random.default_rng(6)
    x, h0, Wx, Wh, b = rnn_params(xp, gen, N=2, T=3, D=2, H=2, gates=4)
    h, cache = recurrent.lstm_forward(x, h0, Wx, Wh, b)
    dh = randn(xp, gen, *h.shape)
    first = recurrent.lstm_backward(dh, cache)
    second = recurrent.lstm_backward(dh, cache)
    for a, b_ in zip(first, second):
        assert rel_error(a, b_) == 0


def test_lstm_forward_gradients(xp):
    gen = numpy.random.default_rng(7)
    x, h0, Wx, Wh, b = rnn_params(xp, gen, N=2, T=4, D=3, H=3, gates=4)
    h, cache = recurrent.lstm_forward(x, h0, Wx, Wh, b)
    dh = randn(xp, gen, *h.shape)
    names = ["x", "h0", "Wx", "Wh", "b"]
    analytic = dict(zip(names, recurrent.lstm_backward(dh, cache)))
    check_grads(lambda: recurrent.lstm_forward(x, h0, Wx, Wh, b)[0],
                dict(zip(names, [x, h0, Wx, Wh, b])), analytic, dh, CHAIN_TOL)


def test_lstm_keeps_float32_and_saturates_without_overflow(xp):
    gen = numpy.random.default_rng(8)
    x, h0, Wx, Wh, b = (as_xp(xp, backend.to_numpy(a), numpy.float32)
                        for a in rnn_params(xp, gen, N=2, T=3, D=4, H=2, gates=4))
    x *= 1e4                                      # gate pre-activations far beyond exp's range
    h, cache = recurrent.lstm_forward(x, h0, Wx, Wh, b)
    grads = recurrent.lstm_backward(xp.ones_like(h), cache)
    assert h.dtype == numpy.float32 and all(g.dtype == numpy.float32 for g in grads)
    assert numpy.isfinite(backend.to_numpy(h)).all()
    assert numpy.abs(backend.to_numpy(h)).max() <= 1


def test_lstm_matches_torch():
    torch = pytest.importorskip("torch")
    gen = numpy.random.default_rng(9)
    N, T, D, H = 3, 5, 4, 6
    x = gen.standard_normal((N, T, D))
    h0 = gen.standard_normal((N, H))
    lstm = torch.nn.LSTM(D, H, batch_first=True).double()
    # torch stores weight_ih (4H, D) with gate blocks i, f, g, o; ours is (D, 4H) with i, f, o, g.
    order = numpy.r_[0:H, H:2 * H, 3 * H:4 * H, 2 * H:3 * H]
    Wx = lstm.weight_ih_l0.detach().numpy()[order].T.copy()
    Wh = lstm.weight_hh_l0.detach().numpy()[order].T.copy()
    b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach().numpy()[order].copy()

    h, cache = recurrent.lstm_forward(x, h0, Wx, Wh, b)
    xt = torch.tensor(x, requires_grad=True)
    h0t = torch.tensor(h0[None], requires_grad=True)
    out, _ = lstm(xt, (h0t, torch.zeros(1, N, H, dtype=torch.float64)))
    assert rel_error(h, out.detach().numpy()) < 1e-10

    dh = gen.standard_normal(h.shape)
    out.backward(torch.tensor(dh))
    dx, dh0, dWx, dWh, db = recurrent.lstm_backward(dh, cache)
    assert rel_error(dx, xt.grad.numpy()) < 1e-10
    assert rel_error(dh0, h0t.grad.numpy()[0]) < 1e-10
    assert rel_error(dWx, lstm.weight_ih_l0.grad.numpy()[order].T) < 1e-10
    assert rel_error(dWh, lstm.weight_hh_l0.grad.numpy()[order].T) < 1e-10
    assert rel_error(db, lstm.bias_ih_l0.grad.numpy()[order]) < 1e-10


@pytest.mark.gpu
def test_lstm_cupy_fused_kernels_match_numpy():
    # On CuPy the elementwise LSTM work is one fused kernel per step; NumPy runs the plain ufuncs.
    if not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    gen = numpy.random.default_rng(12)
    x, h0, Wx, Wh, b = rnn_params(numpy, gen, N=3, T=5, D=4, H=6, gates=4)
    dh = gen.standard_normal((3, 5, 6))
    c_prev = gen.standard_normal((3, 6))
    results = {}
    for name in ["numpy", "cupy"]:
        xp = backend.use(name)
        args = [xp.asarray(a) for a in (x, h0, Wx, Wh, b)]
        h, cache = recurrent.lstm_forward(*args)
        grads = recurrent.lstm_backward(xp.asarray(dh), cache)
        xw = args[0][:, 0] @ args[2] + args[4]
        step_h, step_c, step_cache = recurrent.lstm_step_forward_from_projection(
            xw, args[1], xp.asarray(c_prev), args[3])
        step_grads = recurrent.lstm_step_backward_from_projection(
            xp.asarray(dh[:, 0]), xp.asarray(dh[:, 1]), step_cache)
        results[name] = [backend.to_numpy(a) for a in (h, *grads, step_h, step_c, *step_grads)]
    for got, want in zip(results["cupy"], results["numpy"]):
        assert rel_error(got, want) < 1e-10


def test_recurrent_bad_input(xp):
    gen = numpy.random.default_rng(10)
    x, h0, Wx, Wh, b = rnn_params(xp, gen, N=2, T=3, D=4, H=2, gates=4)
    with pytest.raises(ValueError, match=r"lstm_forward: Wx must have shape \(4, 8\), got \(3, 8\)"):
        recurrent.lstm_forward(x, h0, Wx[:3], Wh, b)
    with pytest.raises(ValueError, match=r"lstm_forward: h0 must have shape \(2, 2\)"):
        recurrent.lstm_forward(x, h0[:1], Wx, Wh, b)
    with pytest.raises(ValueError, match=r"lstm_forward: b must have shape \(8,\)"):
        recurrent.lstm_forward(x, h0, Wx, Wh, b[:4])
    with pytest.raises(ValueError, match=r"lstm_forward: x must be 3-D \(N, T, D\)"):
        recurrent.lstm_forward(x[:, 0], h0, Wx, Wh, b)
    with pytest.raises(TypeError, match="lstm_forward: inputs must share one dtype"):
        recurrent.lstm_forward(x.astype(xp.float32), h0, Wx, Wh, b)
    with pytest.raises(ValueError, match=r"lstm_step_forward: prev_c must have shape \(2, 2\)"):
        recurrent.lstm_step_forward(x[:, 0], h0, h0[:, :1], Wx, Wh, b)
    h, cache = recurrent.lstm_forward(x, h0, Wx, Wh, b)
    with pytest.raises(ValueError, match=r"lstm_backward: dh must have shape \(2, 3, 2\)"):
        recurrent.lstm_backward(h[:, :2], cache)
    with pytest.raises(ValueError, match=r"rnn_forward: Wh must have shape \(2, 2\)"):
        recurrent.rnn_forward(x, h0, Wx[:, :2], Wh, b[:2])
    with pytest.raises(ValueError, match=r"temporal_affine_forward: w must have shape \(4, 5\)"):
        recurrent.temporal_affine_forward(x, randn(xp, gen, 3, 5), randn(xp, gen, 5))


# ---------------------------------------------------------------- temporal affine

def test_temporal_affine_forward_by_hand_and_gradients(xp):
    x = as_xp(xp, [[[1.0, 2.0], [3.0, 4.0]]])
    w = as_xp(xp, [[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
    b = as_xp(xp, [0.0, 1.0, 2.0])
    out, _ = recurrent.temporal_affine_forward(x, w, b)
    assert rel_error(out, numpy.array([[[2.0, 5.0, 1.0], [5.0, 9.0, -1.0]]])) == 0

    gen = numpy.random.default_rng(11)
    x, w, b = randn(xp, gen, 2, 3, 4), randn(xp, gen, 4, 5), randn(xp, gen, 5)
    out, cache = recurrent.temporal_affine_forward(x, w, b)
    dout = randn(xp, gen, *out.shape)
    names = ["x", "w", "b"]
    analytic = dict(zip(names, recurrent.temporal_affine_backward(dout, cache)))
    check_grads(lambda: recurrent.temporal_affine_forward(x, w, b)[0],
                dict(zip(names, [x, w, b])), analytic, dout, SINGLE_OP_TOL)
