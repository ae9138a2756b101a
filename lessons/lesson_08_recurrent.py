"""Lesson 8: recurrent networks - the vanilla RNN, then the LSTM.

A caption is a sequence, and the word to say next depends on the words said
so far. A recurrent network reads one input per time step and carries a
hidden state h_t, a summary of everything seen so far, from step to step;
the same weights are used at every step. Training it is backpropagation
through the unrolled chain of steps ("backpropagation through time", BPTT).
The LSTM (Hochreiter & Schmidhuber 1997) adds a cell state with gates so
that information and gradients survive many steps; Show and Tell
(Vinyals et al. 2015) and Show, Attend and Tell (Xu et al. 2015) both use one.

Shapes: N sequences, T time steps, D input features, H hidden units.
"""
import numpy

from nn import backend
from nn.dense import sigmoid
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from nn.recurrent import (lstm_backward, lstm_forward, lstm_step_forward, rnn_backward, rnn_forward,
                          rnn_step_forward)

TITLE = "Recurrent networks: vanilla RNN, LSTM, backpropagation through time, gradient checks"
SECONDS = 3


def step_1_rnn_step(ctx):
    """One RNN step: h_t = tanh(x_t Wx + h_(t-1) Wh + b).

    The new state mixes the current input and the previous state; tanh keeps
    it between -1 and 1. We compute it by hand and with `rnn_step_forward`.
    """
    gen = backend.rng(0)
    N, D, H = 2, 3, 4
    x, prev_h = gen.standard_normal((N, D)), gen.standard_normal((N, H))
    Wx, Wh, b = 0.5 * gen.standard_normal((D, H)), 0.5 * gen.standard_normal((H, H)), gen.standard_normal(H)
    next_h, _ = rnn_step_forward(x, prev_h, Wx, Wh, b)
    by_hand = backend.xp().tanh(x @ Wx + prev_h @ Wh + b)
    ctx.check(rel_error(next_h, by_hand) < 1e-12, "rnn_step_forward is the formula")
    return {"next_h": backend.to_numpy(next_h).round(4)}


def step_2_unroll(ctx):
    """Unrolling: the same step, the same weights, T times.

    `rnn_forward` runs a whole (N, T, D) sequence and returns every hidden
    state (N, T, H). It is written for speed (one matrix product for all the
    x_t Wx at once) and must equal a plain loop over `rnn_step_forward`.
    """
    gen = backend.rng(1)
    N, T, D, H = 2, 5, 3, 4
    ctx.rnn = {"x": gen.standard_normal((N, T, D)), "h0": gen.standard_normal((N, H)),
               "Wx": 0.5 * gen.standard_normal((D, H)), "Wh": 0.5 * gen.standard_normal((H, H)),
               "b": gen.standard_normal(H)}
    r = ctx.rnn
    h_all, _ = rnn_forward(r["x"], r["h0"], r["Wx"], r["Wh"], r["b"])
    h, loop = r["h0"], []
    for t in range(T):
        h, _ = rnn_step_forward(r["x"][:, t], h, r["Wx"], r["Wh"], r["b"])
        loop.append(h)
    difference = rel_error(h_all, backend.xp().stack(loop, axis=1))
    ctx.check(difference < 1e-12, "rnn_forward equals the loop of steps")
    return {"h shape": h_all.shape, "rnn_forward vs loop": difference}


def step_3_backprop_through_time(ctx):
    """Backpropagation through time, checked numerically.

    Going backwards from the last step, each step receives the gradient of the
    loss for its own output plus the gradient flowing back from the next step
    through h_t; the weight gradients are summed over all steps (the weights
    are shared). Every gradient of `rnn_backward` is compared with a
    finite difference.
    """
    r = ctx.rnn
    h, cache = rnn_forward(r["x"], r["h0"], r["Wx"], r["Wh"], r["b"])
    dh = backend.rng(2).standard_normal(h.shape)
    grads = dict(zip(["x", "h0", "Wx", "Wh", "b"], rnn_backward(dh, cache)))
    errors = {}
    for name in grads:
        def forward(value, name=name):
            args = dict(r, **{name: value})
            return rnn_forward(args["x"], args["h0"], args["Wx"], args["Wh"], args["b"])[0]
        errors[f"relative error d{name}"] = rel_error(grads[name], eval_numerical_gradient_array(forward, r[name], dh))
    ctx.check(max(errors.values()) < 1e-7, f"RNN gradients must match: {errors}")
    return errors


def gradient_reaching_the_start(forward, backward, params, T, H, gen):
    """|d h_T / d h_0| for one sequence of length T: the loss looks only at the LAST state."""
    x = gen.standard_normal((1, T, params["Wx"].shape[0]))
    h0 = gen.standard_normal((1, H))
    h, cache = forward(x, h0, params["Wx"], params["Wh"], params["b"])
    dh = backend.xp().zeros_like(h)
    dh[:, -1] = 1.0 / numpy.sqrt(H)
    dh0 = backward(dh, cache)[1]
    return float(backend.xp().linalg.norm(dh0))


def step_4_vanishing_gradients(ctx):
    """Why plain RNNs forget: the gradient shrinks at every step back.

    d h_T / d h_0 is a product of T factors diag(1 - h_t^2) Wh^T. When those
    factors shrink vectors, the product vanishes exponentially in T (Bengio
    et al. 1994), so a word cannot learn from an image seen 20 steps earlier.
    Here the loss looks only at the last state; we measure how much gradient
    reaches h_0 for growing T.
    """
    gen = backend.rng(3)
    H, D = 16, 8
    params = {"Wx": gen.standard_normal((D, H)) / numpy.sqrt(D),
              "Wh": gen.standard_normal((H, H)) / numpy.sqrt(H), "b": backend.xp().zeros(H)}
    lengths = [1, 5, 10, 20, 40]
    ctx.rnn_norms = [gradient_reaching_the_start(rnn_forward, rnn_backward, params, T, H, backend.rng(4))
                     for T in lengths]
    ctx.lengths = lengths
    ctx.check(ctx.rnn_norms[-1] < 1e-3 * ctx.rnn_norms[0], "the RNN's gradient vanishes")
    return {"T": lengths, "|dh0| (vanilla RNN)": numpy.array(ctx.rnn_norms)}


def step_5_lstm_step(ctx):
    """The LSTM step: four gates from one matrix product, and a cell state.

    a = x Wx + h_(t-1) Wh + b has 4H columns, in blocks of H in the order
    input i, forget f, output o, candidate g:
        i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_g)
        c_t = f * c_(t-1) + i * g      (keep part of the old memory, write some new)
        h_t = o * tanh(c_t)            (show part of the memory)
    """
    gen = backend.rng(5)
    N, D, H = 2, 3, 4
    x, prev_h, prev_c = gen.standard_normal((N, D)), gen.standard_normal((N, H)), gen.standard_normal((N, H))
    Wx, Wh, b = gen.standard_normal((D, 4 * H)), gen.standard_normal((H, 4 * H)), gen.standard_normal(4 * H)
    next_h, next_c, _ = lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b)

    a = x @ Wx + prev_h @ Wh + b
    i, f, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 2 * H:3 * H])
    g = backend.xp().tanh(a[:, 3 * H:])
    c_by_hand = f * prev_c + i * g
    h_by_hand = o * backend.xp().tanh(c_by_hand)
    errors = {"next_c": rel_error(next_c, c_by_hand), "next_h": rel_error(next_h, h_by_hand)}
    ctx.check(max(errors.values()) < 1e-12, "lstm_step_forward is the formula")
    return {"forget gate f[0]": backend.to_numpy(f[0]).round(3), "next_c[0]": backend.to_numpy(next_c[0]).round(3),
            "next_h[0]": backend.to_numpy(next_h[0]).round(3), **{f"difference {k}": v for k, v in errors.items()}}


def step_6_lstm_gradient_check(ctx):
    """The LSTM over a sequence, and its backward pass checked numerically.

    `lstm_forward(x, h0, Wx, Wh, b)` starts from c0 = 0; `lstm_backward`
    returns dx, dh0, dWx, dWh, db. Through a chain of steps the rounding
    errors add up a little, so the bar for recurrent chains is 1e-5.
    """
    gen = backend.rng(6)
    N, T, D, H = 2, 4, 3, 5
    p = {"x": gen.standard_normal((N, T, D)), "h0": gen.standard_normal((N, H)),
         "Wx": 0.5 * gen.standard_normal((D, 4 * H)), "Wh": 0.5 * gen.standard_normal((H, 4 * H)),
         "b": gen.standard_normal(4 * H)}
    h, cache = lstm_forward(p["x"], p["h0"], p["Wx"], p["Wh"], p["b"])
    dh = gen.standard_normal(h.shape)
    grads = dict(zip(["x", "h0", "Wx", "Wh", "b"], lstm_backward(dh, cache)))
    errors = {}
    for name in grads:
        def forward(value, name=name):
            args = dict(p, **{name: value})
            return lstm_forward(args["x"], args["h0"], args["Wx"], args["Wh"], args["b"])[0]
        errors[f"relative error d{name}"] = rel_error(grads[name], eval_numerical_gradient_array(forward, p[name], dh))
    ctx.check(max(errors.values()) < 1e-5, f"LSTM gradients must match: {errors}")
    return errors


def step_7_the_cell_keeps_the_gradient(ctx):
    """The cell state is a gradient highway: d c_(t-1) = f * d c_t.

    Along the cell path there is no squashing matrix product, only the forget
    gate. With the forget-gate bias set to +3 (f close to 0.95 - a common
    initialisation trick), far more gradient reaches h_0 than in the
    vanilla RNN of step 4, measured the same way.
    """
    gen = backend.rng(3)
    H, D = 16, 8
    b = backend.xp().zeros(4 * H)
    b[H:2 * H] = 3.0                                  # forget-gate block
    params = {"Wx": gen.standard_normal((D, 4 * H)) / numpy.sqrt(D),
              "Wh": gen.standard_normal((H, 4 * H)) / numpy.sqrt(H), "b": b}
    lstm_norms = [gradient_reaching_the_start(lstm_forward, lstm_backward, params, T, H, backend.rng(4))
                  for T in ctx.lengths]
    rnn_decay = ctx.rnn_norms[-1] / ctx.rnn_norms[0]
    lstm_decay = lstm_norms[-1] / lstm_norms[0]
    ctx.check(lstm_decay > 100 * rnn_decay, "the LSTM keeps far more gradient than the RNN")
    return {"T": ctx.lengths, "|dh0| (vanilla RNN)": numpy.array(ctx.rnn_norms),
            "|dh0| (LSTM, forget bias 3)": numpy.array(lstm_norms),
            f"fraction left after {ctx.lengths[-1]} steps, RNN": rnn_decay,
            f"fraction left after {ctx.lengths[-1]} steps, LSTM": lstm_decay}


if __name__ == "__main__":  # python lessons/lesson_08_recurrent.py [--no-pause]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
