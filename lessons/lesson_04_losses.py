"""Lesson 4: softmax, cross-entropy, and the log-likelihood a captioner maximises.

A captioner outputs, at every step, one score per vocabulary word. Softmax
turns scores into probabilities; the loss is the negative log-probability of
the word the human actually wrote. Summed over a caption this is the
negative log-likelihood of the caption given the image, the quantity Show
and Tell (Vinyals et al. 2015) trains to minimise:

    theta* = argmax_theta  sum over (image, caption)  log p(caption | image; theta)
"""
import numpy

from nn import backend, losses
from nn.gradcheck import eval_numerical_gradient, rel_error
from nn.losses import softmax, softmax_loss, temporal_softmax_loss

TITLE = "Losses: softmax, cross-entropy, and why captioning maximises log-likelihood"
SECONDS = 0.7

# `python run_lesson.py 4 --exercise`: write these yourself (graded by grade_<name> below and by the steps)
EXERCISES = ["softmax", "softmax_loss"]
EXERCISE_IMPORTS = ["import numpy", "from nn import backend"]


def step_1_softmax(ctx):
    """Softmax: p_j = exp(s_j) / sum_k exp(s_k), computed stably.

    Probabilities are positive and sum to one; a larger score gives a larger
    probability. exp overflows for scores around 710 (float64) or 89
    (float32), so the stable version subtracts the largest score first:
    softmax(s) = softmax(s - max(s)) exactly.
    """
    scores = numpy.array([[2.0, 1.0, 0.1], [1000.0, 1001.0, 1002.0]])
    with numpy.errstate(over="ignore", invalid="ignore"):
        naive = numpy.exp(scores) / numpy.exp(scores).sum(axis=1, keepdims=True)
    stable = backend.to_numpy(softmax(backend.asarray(scores)))
    ctx.check(numpy.allclose(stable.sum(axis=1), 1.0), "each row sums to one")
    ctx.check(numpy.allclose(stable[1], softmax(numpy.array([0.0, 1.0, 2.0]))), "shift invariance")
    return {"scores": scores, "naive exp / sum": naive.round(4), "stable softmax": stable.round(4)}


def step_2_cross_entropy(ctx):
    """Cross-entropy: the loss of one example is -log p_y, y the right class.

    It is 0 when the model puts all probability on the right answer and grows
    without bound as that probability goes to 0. `softmax_loss(x, y)` averages
    it over a batch and also returns the gradient. A freshly initialised
    model with small random scores guesses uniformly, so its loss is close to
    log(C) for C classes: a useful sanity check at the start of any training.
    """
    gen = ctx.rng(0)
    num_classes = 10
    scores = 0.001 * gen.standard_normal((500, num_classes))
    labels = gen.integers(0, num_classes, 500)
    loss, _ = softmax_loss(scores, labels)

    probs = backend.to_numpy(softmax(scores))
    by_hand = -numpy.log(probs[numpy.arange(500), backend.to_numpy(labels)]).mean()
    ctx.check(abs(loss - by_hand) < 1e-10, "softmax_loss is the mean of -log p_y")
    ctx.check(abs(loss - numpy.log(num_classes)) < 0.01, "uniform guessing costs log(C)")
    return {"loss": loss, "by hand": float(by_hand), "log(C)": float(numpy.log(num_classes))}


def step_3_its_gradient(ctx):
    """The gradient of cross-entropy after softmax is simply (p - onehot(y)) / N.

    Push up the right class's score, push down each wrong one in proportion to
    the probability it got. We compare `softmax_loss`'s dx with that formula
    and with a numerical gradient.
    """
    gen = ctx.rng(1)
    scores = gen.standard_normal((4, 5))
    labels = backend.asarray(numpy.array([0, 3, 1, 4]))
    loss, dx = softmax_loss(scores, labels)
    formula = softmax(scores)
    formula[backend.xp().arange(4), labels] -= 1
    formula /= 4
    numeric = eval_numerical_gradient(lambda: softmax_loss(scores, labels)[0], scores)
    errors = {"vs formula": rel_error(dx, formula), "vs numerical": rel_error(dx, numeric)}
    ctx.check(max(errors.values()) < 1e-7, f"dx must match: {errors}")
    return {"loss": loss, "dx[0]": backend.to_numpy(dx[0]).round(4), **errors}


def step_4_caption_log_likelihood(ctx):
    """A caption's probability is a product over its words; its log is a sum.

    p(S | I) = p(w_1 | I) p(w_2 | I, w_1) ... p(<END> | I, w_1..w_n). Products
    of many small numbers underflow and their gradients are awkward; the log
    turns them into a sum of per-word cross-entropies. Captions in a batch
    have different lengths, so they are padded with <NULL> (id 0) and a mask
    removes the padding from the loss. `temporal_softmax_loss` sums over the
    unmasked words and divides by the number of captions N. Perplexity,
    exp(loss per word), is the number of equally likely words the model is
    as unsure as.
    """
    vocab = ["<NULL>", "<START>", "<END>", "a", "red", "blue", "circle", "square"]
    targets = [["a", "red", "circle", "<END>"], ["a", "square", "<END>", "<NULL>"]]
    y = backend.asarray(numpy.array([[vocab.index(w) for w in caption] for caption in targets]))
    mask = y != 0
    scores = ctx.rng(2).standard_normal((2, 4, len(vocab)))
    loss, _ = temporal_softmax_loss(scores, y, mask)

    probs = backend.to_numpy(softmax(scores))
    y_np, mask_np = backend.to_numpy(y), backend.to_numpy(mask)
    word_probs = [[float(probs[i, t, y_np[i, t]]) for t in range(4) if mask_np[i, t]] for i in range(2)]
    log_likelihoods = [float(numpy.sum(numpy.log(p))) for p in word_probs]
    ctx.check(abs(loss - (-sum(log_likelihoods) / 2)) < 1e-10, "loss = -mean caption log-likelihood")
    words = int(mask_np.sum())
    return {"p(word) for caption 1": numpy.round(word_probs[0], 3),
            "p(word) for caption 2": numpy.round(word_probs[1], 3),
            "p(caption 1)": float(numpy.prod(word_probs[0])),
            "log-likelihoods": numpy.round(log_likelihoods, 4), "temporal_softmax_loss": loss,
            "perplexity": float(numpy.exp(loss * 2 / words))}


def step_5_maximum_likelihood_is_counting(ctx):
    """Minimising cross-entropy = maximum likelihood; for word pairs it learns the counts.

    A tiny language model: one score table W[previous word, next word],
    trained by gradient descent on softmax_loss over every word pair of a toy
    caption corpus. The maximum-likelihood answer for such a model is the
    relative frequency of each pair (count(prev, next) / count(prev)), so the
    learned probabilities must approach the counted ones. A captioner does
    the same with an LSTM and an image in place of the table.
    """
    corpus = ["a red circle", "a red square", "a blue circle", "a red circle", "a blue square"]
    vocab = ["<START>", "<END>", "a", "red", "blue", "circle", "square"]
    pairs = []
    for caption in corpus:
        words = ["<START>"] + caption.split() + ["<END>"]
        pairs += [(vocab.index(p), vocab.index(n)) for p, n in zip(words[:-1], words[1:])]
    prev = numpy.array([p for p, _ in pairs])
    prev_x, nxt = backend.asarray(prev), backend.asarray(numpy.array([n for _, n in pairs]))

    table = backend.xp().zeros((len(vocab), len(vocab)))
    for iteration in range(2000):
        loss, dscores = softmax_loss(table[prev_x], nxt)
        dtable = backend.xp().zeros_like(table)
        backend.scatter_add(dtable, prev_x, dscores)      # rows used several times add up
        table -= 10.0 * dtable

    counts = numpy.zeros((len(vocab), len(vocab)))
    numpy.add.at(counts, (prev, backend.to_numpy(nxt)), 1)
    seen = counts.sum(axis=1) > 0
    frequencies = counts[seen] / counts[seen].sum(axis=1, keepdims=True)
    learned = backend.to_numpy(softmax(table))[seen]
    gap = float(numpy.abs(learned - frequencies).max())
    ctx.check(gap < 0.02, f"learned probabilities approach the counts (gap {gap})")
    def as_dict(row):
        return {word: round(float(p), 3) for word, p in zip(vocab, row)}

    red, all_probs = vocab.index("red"), backend.to_numpy(softmax(table))
    conditional = counts / numpy.maximum(counts.sum(axis=1, keepdims=True), 1)
    best_loss = -float(numpy.mean(numpy.log(conditional[prev, backend.to_numpy(nxt)])))
    return {"final loss": loss, "lowest possible loss (with the counted probabilities)": best_loss,
            "counted p(next | 'red')": as_dict(counts[red] / counts[red].sum()),
            "learned p(next | 'red')": as_dict(all_probs[red]),
            "largest gap to the counts": gap}


def grade_softmax(ctx, mine, reference):
    """Your probabilities against the library's, for ordinary scores and for scores near 1000."""
    gen = ctx.rng(20)
    for scores in (gen.standard_normal((4, 7)), 1000.0 + gen.standard_normal((4, 7))):
        with numpy.errstate(over="ignore", invalid="ignore"):
            yours = mine.softmax(scores.copy())
        error = rel_error(yours, reference(scores.copy()))
        ctx.check(error < 1e-12, f"softmax differs from the reference for scores around {float(scores.mean()):.0f}: "
                                 f"relative error {error:.1e} (stable? subtract the largest score first)")
    return "matches the reference, also for scores near 1000"


def grade_softmax_loss(ctx, mine, reference):
    """Your loss against the library's, your dx against finite differences of the library's loss."""
    gen = ctx.rng(21)
    x, y = gen.standard_normal((6, 5)), gen.integers(0, 5, 6)
    loss, dx = mine.softmax_loss(x.copy(), y)
    wanted = reference(x.copy(), y)[0]
    ctx.check(abs(loss - wanted) < 1e-12, f"loss {loss} differs from the reference {wanted}")
    numeric = eval_numerical_gradient(lambda: losses.softmax_loss(x, y)[0], x)
    error = rel_error(dx, numeric)
    ctx.check(error < 1e-7, f"dx differs from finite differences: relative error {error:.1e}")
    return f"loss matches, dx matches finite differences (relative error {error:.1e})"


if __name__ == "__main__":  # python lessons/lesson_04_losses.py [--no-pause]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
