"""Lesson 8: recurrent networks - the vanilla RNN, then the LSTM.

A caption is a sequence, and the word to say next depends on the words said
so far. A recurrent network reads one input per time step and carries a
hidden state h_t, a summary of everything seen so far, from step to step;
the same weights are used at every step. Training it is backpropagation
through the unrolled chain of steps ("backpropagation through time", BPTT).
The LSTM (Hochreiter & Schmidhuber 1997) adds a cell state with gates so
that information and gradients can survive many steps (when its forget gate
stays near 1, step 8); Show and Tell
(Vinyals et al. 2015) and Show, Attend and Tell (Xu et al. 2015) both use one.

Shapes: N sequences, T time steps, D input features, H hidden units.
"""
import numpy

from nn import backend, recurrent
from nn.dense import sigmoid
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from nn.optim import clip_grad_norm
from nn.recurrent import (lstm_backward, lstm_forward, lstm_step_backward, lstm_step_forward, rnn_backward,
                          rnn_forward, rnn_step_forward)

TITLE = "Recurrent networks: vanilla RNN, LSTM, backpropagation through time, gradient checks"
SECONDS = 1

# `python run_lesson.py 8 --exercise`: write these yourself (graded by grade_<name> below and by steps 5 and 7)
EXERCISES = ["lstm_step_forward", "lstm_step_backward"]
EXERCISE_IMPORTS = ["from nn import backend", "from nn.dense import sigmoid"]


def step_1_rnn_step(ctx):
    """One RNN step: h_t = tanh(x_t Wx + h_(t-1) Wh + b).

    The new state mixes the current input and the previous state; tanh keeps
    it between -1 and 1. We compute it by hand and with `rnn_step_forward`.
    """
    gen = ctx.rng(0)
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
    gen = ctx.rng(1)
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
    dh = ctx.rng(2).standard_normal(h.shape)
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
    reaches h_0 for growing T (`gradient_reaching_the_start`, printed below).
    """
    ctx.show_source(gradient_reaching_the_start)
    gen = ctx.rng(3)
    H, D = 16, 8
    params = {"Wx": gen.standard_normal((D, H)) / numpy.sqrt(D),
              "Wh": gen.standard_normal((H, H)) / numpy.sqrt(H), "b": backend.xp().zeros(H)}
    ctx.rnn_params = params
    lengths = [1, 5, 10, 20, 40]
    ctx.rnn_norms = [gradient_reaching_the_start(rnn_forward, rnn_backward, params, T, H, ctx.rng(4))
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
    gen = ctx.rng(5)
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
    gen = ctx.rng(6)
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
    ctx.lstm_case = (p, dh, grads)
    return errors


def step_7_bptt_as_a_loop(ctx):
    """Backpropagation through time written out: a loop over t calling `lstm_step_backward`.

    Forward: T calls of `lstm_step_forward`, keeping each step's cache.
    Backward, from t = T-1 down to 0: step t receives the loss's gradient
    for its own h_t PLUS the dh carried back from step t+1, and the dc
    carried back along the cell; `lstm_step_backward` returns dx_t, the dh
    and dc to carry on to step t-1, and this step's share of dWx, dWh, db,
    which are summed (every step uses the same weights). What comes out of
    step 0 is dh0. `lstm_backward` (step 6) computes exactly this, faster:
    the gate gradients of all steps are kept and dx, dWx, dWh, db come from
    one matrix product each at the end (see nn/recurrent.py).
    """
    p, dh, fast = ctx.lstm_case
    xp, T = backend.xp(), p["x"].shape[1]
    h, c, caches = p["h0"], xp.zeros_like(p["h0"]), []
    for t in range(T):
        h, c, cache = lstm_step_forward(p["x"][:, t], h, c, p["Wx"], p["Wh"], p["b"])
        caches.append(cache)
    dx, dWx, dWh, db = xp.zeros_like(p["x"]), xp.zeros_like(p["Wx"]), xp.zeros_like(p["Wh"]), xp.zeros_like(p["b"])
    dh_carried, dc_carried = xp.zeros_like(p["h0"]), xp.zeros_like(p["h0"])
    for t in reversed(range(T)):
        dx[:, t], dh_carried, dc_carried, dWx_t, dWh_t, db_t = lstm_step_backward(
            dh[:, t] + dh_carried, dc_carried, caches[t])
        dWx, dWh, db = dWx + dWx_t, dWh + dWh_t, db + db_t
    loop = {"x": dx, "h0": dh_carried, "Wx": dWx, "Wh": dWh, "b": db}
    errors = {f"d{name}: loop vs lstm_backward": rel_error(loop[name], fast[name]) for name in loop}
    ctx.check(max(errors.values()) < 1e-10, f"the loop of steps and lstm_backward agree: {errors}")
    return errors


def lstm_with_forget_bias(gen, forget_bias, H=16, D=8):
    """LSTM weights drawn from gen as in step 4 (seed 3), the forget-gate block of b set to `forget_bias`."""
    b = backend.xp().zeros(4 * H)
    b[H:2 * H] = forget_bias                          # forget-gate block
    return {"Wx": gen.standard_normal((D, 4 * H)) / numpy.sqrt(D),
            "Wh": gen.standard_normal((H, 4 * H)) / numpy.sqrt(H), "b": b}


def mean_forget_gate(params, T, H, gen):
    """The LSTM's mean forget gate over one sequence of length T (inputs drawn from gen as in
    gradient_reaching_the_start)."""
    x, h = gen.standard_normal((1, T, params["Wx"].shape[0])), gen.standard_normal((1, H))
    c, gates = backend.xp().zeros((1, H)), []
    for t in range(T):
        a = x[:, t] @ params["Wx"] + h @ params["Wh"] + params["b"]
        gates.append(float(sigmoid(a[:, H:2 * H]).mean()))
        h, c, _ = lstm_step_forward(x[:, t], h, c, params["Wx"], params["Wh"], params["b"])
    return round(float(numpy.mean(gates)), 3)


def step_8_the_forget_gate_keeps_the_gradient(ctx):
    """What lets the LSTM keep its gradient: a forget gate near 1.

    Along the cell path c_t = f * c_(t-1) + i * g, so the gradient c_(t-1)
    receives from c_t is f * d c_t (it also gets gradient through h_(t-1) and
    the gates: this is only the cell-path term). No matrix product squashes
    it, but the forget gate f scales it at every step: with f near 0.5 it
    halves each step, with f near 1 it survives. f = sigmoid(a_f), so the
    forget-gate bias sets where f sits: sigmoid(0) = 0.5, sigmoid(1) = 0.73
    (the bias our captioning models start from), sigmoid(3) = 0.95, before
    the inputs move it (its mean over the sequence is printed). Measured as
    in step 4, for the three biases.
    """
    H = 16
    ctx.lstm_norms = {bias: [gradient_reaching_the_start(lstm_forward, lstm_backward,
                                                          lstm_with_forget_bias(ctx.rng(3), bias), T, H, ctx.rng(4))
                             for T in ctx.lengths] for bias in (0.0, 1.0, 3.0)}
    left = {f"LSTM, forget bias {bias:g}": norms[-1] / norms[0] for bias, norms in ctx.lstm_norms.items()}
    gates = {f"mean forget gate f, bias {bias:g}":
             mean_forget_gate(lstm_with_forget_bias(ctx.rng(3), bias), ctx.lengths[-1], H, ctx.rng(4))
             for bias in ctx.lstm_norms}
    left["vanilla RNN"] = ctx.rnn_norms[-1] / ctx.rnn_norms[0]
    ctx.check(left["LSTM, forget bias 3"] > 1e3 * left["LSTM, forget bias 0"], "a forget gate near 1 keeps gradient")
    ctx.check(left["LSTM, forget bias 0"] < 1e3 * left["vanilla RNN"],
              "with forget bias 0 the LSTM forgets nearly as fast as the RNN")
    return {"T": ctx.lengths, **gates,
            **{f"|dh0| LSTM, forget bias {b:g}": numpy.array(n) for b, n in ctx.lstm_norms.items()},
            **{f"fraction left after {ctx.lengths[-1]} steps, {k}": v for k, v in left.items()}}


def draw_log_curves(path, curves, x_label, y_label, size=(560, 360)):
    """A PNG of several curves {name: (xs, ys)} with a log10 y axis, drawn with Pillow."""
    from PIL import Image, ImageDraw
    colours = [(200, 40, 40), (40, 120, 200), (40, 160, 40), (150, 60, 170)]
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 60, 20, size[0] - 150, size[1] - 40
    points = {name: [(x, numpy.log10(y)) for x, y in zip(*xy)] for name, xy in curves.items()}
    xs = [x for pts in points.values() for x, _ in pts]
    ys = [y for pts in points.values() for _, y in pts]
    x_lo, x_hi, y_lo, y_hi = min(xs), max(xs), numpy.floor(min(ys)), numpy.ceil(max(ys))
    to_px = lambda x, y: (left + (right - left) * (x - x_lo) / (x_hi - x_lo),  # noqa: E731
                          bottom - (bottom - top) * (y - y_lo) / (y_hi - y_lo))
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 120))
    for y in range(int(y_lo), int(y_hi) + 1, max(1, int(y_hi - y_lo) // 6)):
        draw.text((5, to_px(x_lo, y)[1] - 6), f"1e{y}", fill=(90, 90, 90))
    draw.text((left, bottom + 8), f"{x_label}: {x_lo:g} .. {x_hi:g}", fill=(0, 0, 0))
    draw.text((left, 4), y_label + " (log scale)", fill=(0, 0, 0))
    for k, (name, pts) in enumerate(points.items()):
        draw.line([to_px(x, y) for x, y in pts], fill=colours[k % len(colours)], width=2)
        draw.text((right + 8, top + 16 * k), name, fill=colours[k % len(colours)])
    image.save(path)
    return path


def step_9_the_picture(ctx):
    """The same measurement for every T from 1 to 40, as a picture: log |dh0| against T.

    On a log scale an exponential decay is a straight line; its slope is the
    log of the factor lost per step.
    """
    H, lengths = 16, list(range(1, 41))
    curves = {"vanilla RNN": (lengths, [gradient_reaching_the_start(rnn_forward, rnn_backward, ctx.rnn_params,
                                                                     T, H, ctx.rng(4)) for T in lengths])}
    for bias in (0.0, 1.0, 3.0):
        curves[f"LSTM, forget bias {bias:g}"] = (lengths, [gradient_reaching_the_start(
            lstm_forward, lstm_backward, lstm_with_forget_bias(ctx.rng(3), bias), T, H, ctx.rng(4)) for T in lengths])
    path = draw_log_curves(ctx.output_path("lesson08_gradient_vs_T.png"), curves, "T (steps back)", "|dh0|")
    slopes = {name: float(numpy.polyfit(xy[0], numpy.log10(xy[1]), 1)[0]) for name, xy in curves.items()}
    ctx.check(slopes["LSTM, forget bias 3"] > slopes["LSTM, forget bias 1"] > slopes["LSTM, forget bias 0"],
              "the larger the forget bias, the slower the decay")
    return {"picture": str(path), **{f"factor per step, {k}": 10 ** v for k, v in slopes.items()}}


def step_10_exploding_and_clipping(ctx):
    """The other failure: exploding gradients, and the usual cure, clipping.

    When Wh stretches vectors (here the RNN of step 4 with Wh times 4 and
    small inputs), the product of T factors can GROW exponentially instead:
    one step of gradient descent would throw the weights far away. `nn.optim.clip_grad_norm`
    rescales all gradients together so that their total norm is at most
    max_norm (the Trainer uses 5): the direction is kept, only the length
    is cut.
    """
    H, T = 16, 40
    big = dict(ctx.rnn_params, Wh=4 * ctx.rnn_params["Wh"], Wx=0.01 * ctx.rnn_params["Wx"])
    norms = [gradient_reaching_the_start(rnn_forward, rnn_backward, big, t, H, ctx.rng(4)) for t in ctx.lengths]
    gen = ctx.rng(5)
    h, cache = rnn_forward(0.01 * gen.standard_normal((1, T, 8)), 0.01 * gen.standard_normal((1, H)),
                           big["Wx"], big["Wh"], big["b"])
    dh = backend.xp().zeros_like(h)
    dh[:, -1] = 1.0
    grads = dict(zip(["x", "h0", "Wx", "Wh", "b"], rnn_backward(dh, cache)))
    before = {name: g.copy() for name, g in grads.items()}
    total = clip_grad_norm(grads, max_norm=5.0)
    after = float(numpy.sqrt(sum(float((g ** 2).sum()) for g in grads.values())))
    cosine = sum(float((before[k] * grads[k]).sum()) for k in grads) / (total * after)
    ctx.check(norms[-1] > 100 * norms[0], "the gradient explodes")
    ctx.check(abs(after - 5.0) < 1e-9 and abs(cosine - 1) < 1e-12, "clipped to norm 5, same direction")
    return {"T": ctx.lengths, "|dh0| (RNN, Wh x 4)": numpy.array(norms), "gradient norm before clipping": total,
            "after clipping": after, "cosine(before, after)": cosine}


def exercise_inputs(gen, N=3, D=4, H=5):
    """float64 inputs of one LSTM step drawn from gen, for grading."""
    return (gen.standard_normal((N, D)), gen.standard_normal((N, H)), gen.standard_normal((N, H)),
            0.5 * gen.standard_normal((D, 4 * H)), 0.5 * gen.standard_normal((H, 4 * H)), gen.standard_normal(4 * H))


def grade_lstm_step_forward(ctx, mine, reference):
    """Your next_h and next_c against the library's, on random inputs."""
    args = exercise_inputs(ctx.rng(7))
    yours, wanted = mine.lstm_step_forward(*args)[:2], reference(*args)[:2]
    errors = [rel_error(y, w) for y, w in zip(yours, wanted)]
    ctx.check(max(errors) < 1e-10, f"next_h, next_c differ from the reference: relative errors {errors}")
    return f"next_h, next_c match the reference (relative errors {max(errors):.1e})"


def grade_lstm_step_backward(ctx, mine, reference):
    """Your six gradients (from the cache of YOUR forward) against finite differences of the reference forward."""
    args = exercise_inputs(ctx.rng(7))
    gen = ctx.rng(8)
    dnext_h, dnext_c = gen.standard_normal(args[1].shape), gen.standard_normal(args[1].shape)
    try:
        cache = mine.lstm_step_forward(*args)[2]
    except NotImplementedError:
        raise NotImplementedError("it needs your lstm_step_forward (its cache) first") from None
    grads = mine.lstm_step_backward(dnext_h, dnext_c, cache)
    dout = backend.xp().concatenate([dnext_h, dnext_c], axis=1)
    names, errors = ["dx", "dprev_h", "dprev_c", "dWx", "dWh", "db"], {}
    for k, name in enumerate(names):
        def both_outputs(value, k=k):
            changed = list(args[:k]) + [value] + list(args[k + 1:])
            return backend.xp().concatenate(recurrent.lstm_step_forward(*changed)[:2], axis=1)
        errors[name] = rel_error(grads[k], eval_numerical_gradient_array(both_outputs, args[k], dout))
    ctx.check(max(errors.values()) < 1e-6, f"gradients differ from finite differences: {errors}")
    return f"all six gradients match finite differences (largest relative error {max(errors.values()):.1e})"


if __name__ == "__main__":  # python lessons/lesson_08_recurrent.py [--no-pause]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
