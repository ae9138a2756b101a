"""Lesson 3: backpropagation by hand.

A network is a chain of simple functions. Training needs the gradient of the
loss with respect to every parameter; backpropagation gets it by the chain
rule, one layer at a time, from the loss back to the input. In this project
every layer is a pair of functions, as in Stanford's CS231n:

    out, cache = layer_forward(inputs...)     # remembers what backward needs
    d_inputs... = layer_backward(dout, cache) # dout = d loss / d out

and every backward is proved right by a numerical gradient check.
"""
import numpy

from nn import backend, dense
from nn.dense import affine_backward, affine_forward, relu_backward, relu_forward
from nn.gradcheck import eval_numerical_gradient, eval_numerical_gradient_array, rel_error

TITLE = "Backpropagation by hand: affine and ReLU, and the numerical gradient check"
SECONDS = 0.6

# `python run_lesson.py 3 --exercise`: write these yourself (graded by grade_<name> below and by the steps)
EXERCISES = ["affine_forward", "affine_backward", "relu_backward"]
EXERCISE_IMPORTS = ["import numpy"]


def step_1_one_neuron(ctx):
    """The chain rule on one neuron: f = relu(w * x + b).

    Forward: compute and keep the intermediate z = w*x + b. Backward: start
    from df/df = 1 and multiply by each local derivative on the way back:
    df/dz = 1 if z > 0 else 0, then dz/dw = x, dz/dx = w, dz/db = 1.
    A centred finite difference (f(w+h) - f(w-h)) / 2h checks the result.
    """
    x, w, b = 2.0, -0.5, 3.0
    z = w * x + b                       # forward, step 1
    f = max(0.0, z)                     # forward, step 2
    df_dz = 1.0 if z > 0 else 0.0       # backward through relu
    df_dw, df_dx, df_db = df_dz * x, df_dz * w, df_dz * 1.0

    h = 1e-5
    numeric_dw = (max(0.0, (w + h) * x + b) - max(0.0, (w - h) * x + b)) / (2 * h)
    ctx.check(abs(numeric_dw - df_dw) < 1e-8, "chain rule and finite difference agree")
    return {"f": f, "df/dw": df_dw, "df/dx": df_dx, "df/db": df_db, "numerical df/dw": numeric_dw}


def step_2_affine_forward(ctx):
    """The affine (fully connected) layer: out = x.reshape(N, D) @ w + b.

    Each of the N examples, whatever its shape, is flattened to a vector of D
    numbers; w (D, M) maps it to M outputs. This is the layer that turns an
    image feature into an LSTM state or a hidden state into word scores.
    """
    gen = ctx.rng(0)
    ctx.x = gen.standard_normal((4, 2, 3))          # N=4 examples of shape 2x3, so D=6
    ctx.w = gen.standard_normal((6, 5))             # M=5 outputs
    ctx.b = gen.standard_normal(5)
    out, ctx.affine_cache = affine_forward(ctx.x, ctx.w, ctx.b)
    by_hand = ctx.x.reshape(4, 6) @ ctx.w + ctx.b
    ctx.check(rel_error(out, by_hand) < 1e-12, "affine_forward is x.reshape(N, D) @ w + b")
    return {"x": ctx.x.shape, "w": ctx.w.shape, "out": out.shape,
            "out[0]": backend.to_numpy(out[0]).round(4)}


def step_3_affine_backward(ctx):
    """Its backward pass, and the numerical check that proves it.

    With dout = d loss / d out of shape (N, M):
        dx = dout @ w.T (reshaped like x),  dw = x.T @ dout,  db = dout summed over N.
    `eval_numerical_gradient_array(f, x, dout)` nudges each entry of x by
    +-h and measures how sum(f(x) * dout) changes. The relative error
    max|a - b| / (|a| + |b|) of a correct float64 backward is tiny (below
    1e-7 here; a bug gives something near 1). The finite difference itself
    is only accurate to an ABSOLUTE 1e-10 or so (rounding of f divided by h,
    plus h^2 terms), so on entries whose gradient is itself near 1e-5 the
    relative error of a correct backward can reach 1e-6 (lesson 9 shows one).
    """
    dout = ctx.rng(1).standard_normal((4, 5))
    dx, dw, db = affine_backward(dout, ctx.affine_cache)

    x, w, b = ctx.x, ctx.w, ctx.b
    dx_num = eval_numerical_gradient_array(lambda v: affine_forward(v, w, b)[0], x, dout)
    dw_num = eval_numerical_gradient_array(lambda v: affine_forward(x, v, b)[0], w, dout)
    db_num = eval_numerical_gradient_array(lambda v: affine_forward(x, w, v)[0], b, dout)
    errors = {"dx": rel_error(dx, dx_num), "dw": rel_error(dw, dw_num), "db": rel_error(db, db_num)}
    ctx.check(max(errors.values()) < 1e-7, f"affine gradients must match: {errors}")
    return {f"relative error {k}": v for k, v in errors.items()}


def step_4_relu(ctx):
    """ReLU: out = max(0, x); the gradient passes where x > 0 and is cut elsewhere.

    ReLU has no parameters; its backward is a mask. (The check avoids inputs
    within h of 0, where max(0, x) has a kink and no derivative.)
    """
    x = ctx.rng(2).standard_normal((3, 6))
    x[backend.xp().abs(x) < 1e-3] = 0.5
    out, cache = relu_forward(x)
    dout = ctx.rng(3).standard_normal(x.shape)
    dx = relu_backward(dout, cache)
    dx_num = eval_numerical_gradient_array(lambda v: relu_forward(v)[0], x, dout)
    error = rel_error(dx, dx_num)
    ctx.check(error < 1e-7, "relu_backward must match")
    shown_dx = backend.to_numpy(dx[0]).round(2) + 0.0       # + 0.0 shows -0.0 (negative dout * 0) as 0.0
    return {"x[0]": backend.to_numpy(x[0]).round(2), "relu(x)[0]": backend.to_numpy(out[0]).round(2),
            "dout[0]": backend.to_numpy(dout[0]).round(2), "dx[0]": shown_dx,
            "relative error dx": error}


def two_layer_loss(x, target, w1, b1, w2, b2):
    """A two-layer net with a squared-error loss; returns loss and all gradients."""
    hidden, cache1 = affine_forward(x, w1, b1)
    active, cache_relu = relu_forward(hidden)
    pred, cache2 = affine_forward(active, w2, b2)
    n = x.shape[0]
    loss = 0.5 * float(((pred - target) ** 2).sum()) / n
    dpred = (pred - target) / n                       # d loss / d pred
    dactive, dw2, db2 = affine_backward(dpred, cache2)
    dhidden = relu_backward(dactive, cache_relu)
    _, dw1, db1 = affine_backward(dhidden, cache1)
    return loss, {"w1": dw1, "b1": db1, "w2": dw2, "b2": db2}


def step_5_chain_layers(ctx):
    """Backprop through a whole network: call the backwards in reverse order.

    Net: affine -> relu -> affine, loss = mean over examples of 0.5*|pred - target|^2.
    Each backward takes the gradient of its output and returns the gradients
    of its inputs, which are the outputs of the layer before
    (`two_layer_loss`, printed below). We check every parameter of the
    whole net numerically.
    """
    ctx.show_source(two_layer_loss)
    gen = ctx.rng(4)
    x, target = gen.standard_normal((5, 3)), gen.standard_normal((5, 2))
    params = {"w1": 0.5 * gen.standard_normal((3, 8)), "b1": 0.1 * gen.standard_normal(8),
              "w2": 0.5 * gen.standard_normal((8, 2)), "b2": 0.1 * gen.standard_normal(2)}
    loss, grads = two_layer_loss(x, target, **params)
    errors = {}
    for name in params:
        numeric = eval_numerical_gradient(lambda: two_layer_loss(x, target, **params)[0], params[name])
        errors[f"relative error d{name}"] = rel_error(grads[name], numeric)
    ctx.check(max(errors.values()) < 1e-7, f"whole-net gradients must match: {errors}")
    return {"loss": loss, **errors}


def step_6_gradient_descent(ctx):
    """Use the gradients: gradient descent fits y = sin(x).

    Repeat: compute loss and gradients, move every parameter a small step
    against its gradient (w -= learning_rate * dw). 64 hidden units are
    enough to bend a line into a sine wave on [-3, 3]: each ReLU unit adds
    one kink, placed at random in [-3, 3] at the start.
    """
    xp = backend.xp()
    gen = ctx.rng(5)
    x = xp.linspace(-3, 3, 64).reshape(64, 1)
    target = xp.sin(x)
    w1 = gen.standard_normal((1, 64))
    kinks = gen.uniform(-3, 3, 64)                  # where each hidden unit starts to bend
    params = {"w1": w1, "b1": -w1[0] * kinks, "w2": 0.1 * gen.standard_normal((64, 1)), "b2": xp.zeros(1)}
    losses = []
    for iteration in range(1500):
        loss, grads = two_layer_loss(x, target, **params)
        losses.append(loss)
        for name in params:
            params[name] -= 0.02 * grads[name]
    ctx.check(losses[-1] < losses[0] / 10, "training must reduce the loss at least tenfold")
    every = len(losses) // 5
    return {"iterations": len(losses), "loss at start": losses[0],
            "loss every %d iterations" % every: numpy.round(losses[::every], 5), "loss at end": losses[-1]}


def grade_affine_forward(ctx, mine, reference):
    """Your out against the library's, for inputs of shape (N, 2, 3)."""
    gen = ctx.rng(10)
    x, w, b = gen.standard_normal((4, 2, 3)), gen.standard_normal((6, 5)), gen.standard_normal(5)
    error = rel_error(mine.affine_forward(x, w, b)[0], reference(x, w, b)[0])
    ctx.check(error < 1e-12, f"out differs from the reference: relative error {error:.1e}")
    return f"out matches the reference (relative error {error:.1e})"


def grade_affine_backward(ctx, mine, reference):
    """Your dx, dw, db (from the cache of YOUR forward) against finite differences of the library's forward."""
    gen = ctx.rng(11)
    args = [gen.standard_normal((4, 2, 3)), gen.standard_normal((6, 5)), gen.standard_normal(5)]
    dout = gen.standard_normal((4, 5))
    try:
        cache = mine.affine_forward(*args)[1]
    except NotImplementedError:
        raise NotImplementedError("it needs your affine_forward (its cache) first") from None
    grads, errors = mine.affine_backward(dout, cache), {}
    for k, name in enumerate(["dx", "dw", "db"]):
        def out(value, k=k):
            return dense.affine_forward(*(args[:k] + [value] + args[k + 1:]))[0]
        errors[name] = rel_error(grads[k], eval_numerical_gradient_array(out, args[k], dout))
    ctx.check(max(errors.values()) < 1e-7, f"gradients differ from finite differences: {errors}")
    return f"dx, dw, db match finite differences (largest relative error {max(errors.values()):.1e})"


def grade_relu_backward(ctx, mine, reference):
    """Your dx against finite differences of max(0, x) (inputs kept away from the kink at 0)."""
    x = ctx.rng(12).standard_normal((3, 6))
    x[backend.xp().abs(x) < 1e-3] = 0.5
    dout = ctx.rng(13).standard_normal(x.shape)
    dx = mine.relu_backward(dout, dense.relu_forward(x)[1])
    error = rel_error(dx, eval_numerical_gradient_array(lambda v: dense.relu_forward(v)[0], x, dout))
    ctx.check(error < 1e-7, f"dx differs from finite differences: relative error {error:.1e}")
    return f"dx matches finite differences (relative error {error:.1e})"


if __name__ == "__main__":  # python lessons/lesson_03_backprop.py [--no-pause]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
