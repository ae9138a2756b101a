"""Softmax and the cross-entropy losses a captioner is trained with.

A captioner is trained to maximise the log-likelihood of the human caption,
i.e. to minimise the cross-entropy -sum_t log p(word_t | image, words_<t).
Every loss here returns `(loss, dx)`: the scalar loss as a Python float and
its gradient with respect to the scores, as in CS231n.

Numerical stability: exp of a large score overflows, so every softmax first
subtracts the row maximum (softmax is unchanged by a constant shift).
"""
from . import backend

__all__ = ["softmax", "log_softmax", "softmax_loss", "temporal_softmax_loss", "weighted_temporal_softmax_loss",
           "policy_gradient_loss"]


def softmax(x, axis=-1):
    """Softmax along `axis`, computed stably.

    Inputs:
    - x: array of scores, any shape
    - axis: the axis that sums to one (default: the last)
    Returns:
    - probs: array of the same shape and dtype as x, non-negative, summing to 1 along `axis`
    """
    xp = backend.get_array_module(x, op="softmax")
    probs = x - x.max(axis=axis, keepdims=True)
    xp.exp(probs, out=probs)
    probs /= probs.sum(axis=axis, keepdims=True)
    return probs


def log_softmax(x, axis=-1):
    """Logarithm of the softmax along `axis`: x - max - log(sum(exp(x - max))).

    Inputs:
    - x: array of scores, any shape
    - axis: the normalised axis (default: the last)
    Returns:
    - log_probs: array of the same shape and dtype as x (all <= 0)
    """
    xp = backend.get_array_module(x, op="log_softmax")
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def _check_labels(op, x, y, score_shape_name):
    """Labels must be integers of shape x.shape[:-1] with values in [0, C)."""
    xp = backend.get_array_module(x, y, op=op)
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: scores must be a floating array, got dtype {x.dtype}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels y must be integers, got dtype {y.dtype}")
    if y.shape != x.shape[:-1]:
        raise ValueError(
            f"{op}: labels y must have shape {x.shape[:-1]} to match scores {score_shape_name} "
            f"{x.shape}, got {y.shape}")
    num_classes = x.shape[-1]
    if bool(((y < 0) | (y >= num_classes)).any()):     # one device sync on CuPy, not two
        raise ValueError(
            f"{op}: labels must lie in [0, {num_classes}), got values in "
            f"[{int(y.min())}, {int(y.max())}]")
    return xp


def softmax_loss(x, y):
    """Softmax cross-entropy loss, averaged over the minibatch.

    Inputs:
    - x: scores, shape (N, C); x[i, j] is the score of class j for example i
    - y: integer labels, shape (N,), with 0 <= y[i] < C
    Returns a tuple of:
    - loss: Python float, mean over i of -log softmax(x[i])[y[i]]
    - dx: gradient of the loss with respect to x, shape (N, C)
    """
    if x.ndim != 2:
        raise ValueError(f"softmax_loss: scores x must have shape (N, C), got {x.shape}")
    xp = _check_labels("softmax_loss", x, y, "(N, C)")
    num_examples = x.shape[0]
    rows = xp.arange(num_examples)

    shifted = x - x.max(axis=1, keepdims=True)
    correct_shifted = shifted[rows, y]                 # copied before exp overwrites
    probs = xp.exp(shifted, out=shifted)
    sums = probs.sum(axis=1)
    loss = float(xp.sum(xp.log(sums) - correct_shifted)) / max(num_examples, 1)   # N = 0: loss 0

    probs /= sums[:, None]
    dx = probs                                         # d loss / d x = (p - onehot(y)) / N
    dx[rows, y] -= 1
    dx /= max(num_examples, 1)
    return loss, dx


def temporal_softmax_loss(x, y, mask):
    """Softmax cross-entropy over a minibatch of sequences, ignoring masked tokens.

    The loss is SUMMED over time steps and unmasked tokens and divided by the
    number of sequences N (not by the number of tokens), exactly as in CS231n.

    Inputs:
    - x: scores, shape (N, T, V) over a vocabulary of size V
    - y: integer targets, shape (N, T), with 0 <= y[i, t] < V
    - mask: shape (N, T), boolean (or 0/1); mask[i, t] says whether token
      (i, t) counts in the loss (padding <NULL> tokens are masked out)
    Returns a tuple of:
    - loss: Python float, -sum_{i,t} mask[i,t] * log softmax(x[i,t])[y[i,t]] / N
    - dx: gradient of the loss with respect to x, shape (N, T, V)
    """
    op = "temporal_softmax_loss"
    _check_sequence_scores(op, x, y, mask, "mask")
    if mask.dtype.kind not in "biu":
        raise TypeError(f"{op}: mask must be boolean (or 0/1 integers), got dtype {mask.dtype}")

    return _weighted_loss(x, y, mask.astype(x.dtype))


def _check_sequence_scores(op, x, y, per_token, name):
    """Scores x (N, T, V), labels y (N, T) in range, and one `name` value per token (N, T) on x's backend."""
    if x.ndim != 3:
        raise ValueError(f"{op}: scores x must have shape (N, T, V), got {x.shape}")
    _check_labels(op, x, y, "(N, T, V)")
    backend.get_array_module(x, per_token, op=op)
    if per_token.shape != x.shape[:2]:
        raise ValueError(f"{op}: {name} must have shape {x.shape[:2]} (N, T), got {per_token.shape}")


def weighted_temporal_softmax_loss(x, y, weights):
    """Cross-entropy over sequences with a real-valued weight on every token's loss.

    The masked loss above is the case of weights 0/1; here a weight may be any
    number, negative too (policy_gradient_loss below).

    Inputs:
    - x: scores, shape (N, T, V)
    - y: integer targets, shape (N, T), with 0 <= y[i, t] < V
    - weights: float array (N, T); token (i, t) adds weights[i, t] * -log p(y[i, t])
    Returns a tuple of:
    - loss: Python float, -sum_{i,t} weights[i,t] * log softmax(x[i,t])[y[i,t]] / N
    - dx: gradient of the loss with respect to x, shape (N, T, V):
      weights[i, t] / N * (softmax(x[i, t]) - onehot(y[i, t]))
    """
    op = "weighted_temporal_softmax_loss"
    _check_sequence_scores(op, x, y, weights, "weights")
    if weights.dtype.kind != "f":
        raise TypeError(f"{op}: weights must be a floating array, got dtype {weights.dtype}")
    return _weighted_loss(x, y, weights.astype(x.dtype, copy=False))


def policy_gradient_loss(x, sampled, sampled_mask, advantages):
    """REINFORCE surrogate loss of sampled sequences (self-critical training, Rennie et al. 2017).

    A sequence w_1..w_L sampled from the model's own distribution earns a
    reward r; with a baseline b that does not depend on the sample,
    (r - b) * grad log p(w_1..w_L) is an unbiased estimate of the gradient of
    the expected reward. Its loss is minus the log-probability of the sampled
    tokens weighted by the advantage r - b,

        loss = -sum_i (r_i - b_i) sum_t mask[i, t] log p(w_it | w_i,<t) / N,

    and d loss / d scores[i, t] = (r_i - b_i) / N * (softmax - onehot(w_it)):
    the teacher-forced cross-entropy gradient on the sampled sequence, scaled
    per sequence by its advantage (a sample better than the baseline is made
    more likely, a worse one less likely).

    Inputs:
    - x: scores, shape (N, T, V), computed with the sampled words as inputs
    - sampled: the sampled words, integer (N, T); the end token counts (its
      probability decides where the caption stops)
    - sampled_mask: boolean (N, T), True for the L_i sampled tokens of row i
      (a token that happens to equal a padding id counts too, so not `!= null`)
    - advantages: float (N,), r_i - b_i
    Returns a tuple of:
    - loss: Python float (the surrogate: its value is not the expected reward)
    - dx: gradient of the loss with respect to x, shape (N, T, V)
    """
    op = "policy_gradient_loss"
    if getattr(advantages, "shape", None) != x.shape[:1] or advantages.dtype.kind != "f":
        raise ValueError(f"{op}: advantages must be floats of shape ({x.shape[0]},), got "
                         f"{getattr(advantages, 'shape', None)} {getattr(advantages, 'dtype', '')}")
    if getattr(sampled_mask, "shape", None) != x.shape[:2] or sampled_mask.dtype.kind != "b":
        raise ValueError(f"{op}: sampled_mask must be boolean of shape {x.shape[:2]}, got "
                         f"{getattr(sampled_mask, 'shape', None)} {getattr(sampled_mask, 'dtype', '')}")
    weights = sampled_mask.astype(x.dtype) * advantages.astype(x.dtype)[:, None]
    return weighted_temporal_softmax_loss(x, sampled, weights)


def _weighted_loss(x, y, token_weights):
    """The shared body: loss and dx of -sum w log softmax(x)[y] / N, with checked inputs."""
    xp = backend.get_array_module(x)
    num_sequences, num_steps, vocab_size = x.shape
    tokens = num_sequences * num_steps
    x_flat = x.reshape(tokens, vocab_size)
    y_flat = y.reshape(tokens)
    weights = token_weights.reshape(tokens) / max(num_sequences, 1)   # w / N: a mask's 1/N for kept tokens, else 0
    rows = xp.arange(tokens)

    shifted = x_flat - x_flat.max(axis=1, keepdims=True)
    correct_shifted = shifted[rows, y_flat]
    probs = xp.exp(shifted, out=shifted)
    sums = probs.sum(axis=1)
    loss = float(xp.sum(weights * (xp.log(sums) - correct_shifted)))

    probs /= sums[:, None]
    dx = probs
    dx[rows, y_flat] -= 1
    dx *= weights[:, None]
    return loss, dx.reshape(num_sequences, num_steps, vocab_size)
