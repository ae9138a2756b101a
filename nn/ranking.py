"""Image-sentence scores from fragments, and the bidirectional max-margin ranking loss.

Karpathy & Fei-Fei (2015), "Deep Visual-Semantic Alignments", section 3.1.3:
an image k is a set of region vectors v_i, a sentence l a set of word vectors
s_t, both in one h-dimensional space. Each word picks its best region, and the
image-sentence score adds up these best matches (their simplified score):

    S_kl = sum_{t in sentence l} max_{i in image k} v_i . s_t

Over a minibatch of N true pairs (image k with sentence k), the structured
max-margin loss wants each true pair to beat every wrong pairing by a margin
(the paper's is 1), in both directions: sentences ranked for an image (a row
of S) and images ranked for a sentence (a column of S):

    C = 1/N sum_k [ sum_{l != k} max(0, S_kl - S_kk + margin)
                  + sum_{l != k} max(0, S_lk - S_kk + margin) ]

(the paper sums over k; the mean keeps the step size independent of N).

hardest=True is the "max of hinges" of VSE++ (Faghri et al. 2018, "VSE++: Improving
Visual-Semantic Embeddings with Hard Negatives"): each true pair pays only for its
hardest wrong pairing in each direction, instead of for all of them,

    C = 1/N sum_k [ max_{l != k} max(0, S_kl - S_kk + margin)
                  + max_{l != k} max(0, S_lk - S_kk + margin) ]

so that the few confusers that matter are not drowned by the many easy negatives
that a sum of hinges keeps paying small amounts for.

Options of the score (both off by default = the simplified score above):
- clip: each word's best match counts as max(0, max_i v_i . s_t), as in the
  paper's full fragment objective, so a word that fits no region adds nothing
  instead of a penalty;
- average: divide by the sentence's number of words, so that long sentences do
  not get larger scores (and larger gradients) than short ones.
l2_normalize_forward/backward turn dot products into cosines (unit vectors).
"""
from . import backend
from .dense import _check_float, _check_ndim, _check_shape

__all__ = ["fragment_score_forward", "fragment_score_backward", "l2_normalize_forward", "l2_normalize_backward",
           "max_margin_ranking_forward", "max_margin_ranking_backward"]


def fragment_score_forward(v, s, mask, clip=False, average=False):
    """S[k, l] = sum_t mask[l, t] * max_i v[k, i] . s[l, t], every image with every sentence.

    Inputs:
    - v: (N, R, H) region vectors of N images (R regions each)
    - s: (M, T, H) word vectors of M sentences (right-padded to T words)
    - mask: (M, T), 1 for real words, 0 for padding
    - clip: a word's best match counts as max(0, max_i v_i . s_t)
    - average: divide each sentence's sum by its number of words
    Returns:
    - S: (N, M) scores
    - cache: for fragment_score_backward (holds the best region of every
      (real word, image), W * N integers, W = number of real words)
    Memory: the (W, N, R) table of dot products.
    """
    op = "fragment_score_forward"
    xp = backend.get_array_module(v, s, op=op)
    _check_ndim(op, "v", v, 3, "(N, R, H)")
    _check_ndim(op, "s", s, 3, "(M, T, H)")
    N, R, H = v.shape
    M, T, _ = s.shape
    _check_shape(op, "s", s, (M, T, H))
    _check_shape(op, "mask", mask, (M, T))
    _check_float(op, v=v, s=s)
    # Only the real words are scored (padding would cost up to half the time): the W real
    # words of all sentences in one (W, H) matrix, word-major, so that each word's choice
    # of region in an image is a contiguous run of R dot products.
    flat_mask = xp.asarray(mask, dtype=v.dtype).reshape(M * T)
    where = xp.flatnonzero(flat_mask)                                  # (W,) positions of real words
    W = int(where.shape[0])
    words = s.reshape(M * T, H)[where]                                 # (W, H)
    owner = xp.zeros((W, M), dtype=v.dtype)                            # owner[w, m] = 1: word w is in m
    owner[xp.arange(W), where // T] = 1
    dots = (words @ v.reshape(N * R, H).T).reshape(W * N, R)
    best = dots.argmax(axis=1)                                         # (W * N,)
    chosen = dots[xp.arange(W * N), best].reshape(W, N)                # max_i v_i . s_w, every image
    weights = flat_mask[where][:, None]
    if average:
        lengths = xp.asarray(mask, dtype=v.dtype).sum(axis=1)          # (M,)
        weights = weights / lengths[where // T][:, None]
    if clip:
        weights = weights * (chosen > 0)                               # (W, N): 0 where the best is < 0
    S = (chosen * weights).T @ owner                                   # (N, M)
    return S, (v, words, where, owner, weights, best, s.shape)


def fragment_score_backward(dS, cache):
    """Backward pass of fragment_score_forward: only each word's best region gets gradient.

    Inputs:
    - dS: (N, M) upstream gradient
    - cache: from the forward pass
    Returns: dv (N, R, H), ds (M, T, H) (zero on padding)
    """
    v, words, where, owner, weights, best, s_shape = cache
    xp = backend.get_array_module(dS, v, op="fragment_score_backward")
    N, R, H = v.shape
    M, T, _ = s_shape
    W = words.shape[0]
    _check_shape("fragment_score_backward", "dS", dS, (N, M))
    dchosen = (owner @ dS.T) * weights                                 # (W, N); weights (W, 1) or (W, N)
    # route[w, k, i] = dchosen[w, k] where i is word w's best region in image k, else 0
    route = xp.zeros((W * N, R), dtype=v.dtype)
    route[xp.arange(W * N), best] = dchosen.ravel()
    route = route.reshape(W, N * R)
    ds = xp.zeros((M * T, H), dtype=v.dtype)
    ds[where] = route @ v.reshape(N * R, H)
    dv = (route.T @ words).reshape(N, R, H)
    return dv, ds.reshape(M, T, H)


def l2_normalize_forward(x, eps=1e-6):
    """y = x / sqrt(|x|^2 + eps^2) along the last axis (unit vectors; eps keeps 0 finite).

    Inputs: x (..., H). Returns: y (..., H), cache.
    """
    xp = backend.get_array_module(x, op="l2_normalize_forward")
    _check_float("l2_normalize_forward", x=x)
    norm = xp.sqrt((x * x).sum(axis=-1, keepdims=True) + eps * eps)
    y = x / norm
    return y, (y, norm)


def l2_normalize_backward(dy, cache):
    """Backward pass of l2_normalize_forward: dx = (dy - y (y . dy)) / norm."""
    y, norm = cache
    return (dy - y * (y * dy).sum(axis=-1, keepdims=True)) / norm


def max_margin_ranking_forward(S, margin=1.0, ignore=None, hardest=False):
    """The bidirectional max-margin ranking loss of a square score matrix (see module doc).

    Inputs:
    - S: (N, N) scores, S[k, l] of image k and sentence l; the diagonal holds the true pairs
    - margin: how far a true pair must beat every wrong one (the paper's 1)
    - ignore: optional (N, N) bool, True for pairs (k, l) that are not wrong pairs even
      though l != k (e.g. sentence l is word for word sentence k): they add no loss
    - hardest: only the hardest wrong pair of each row and of each column counts (VSE++'s
      max of hinges); ignored pairs are never the hardest, and a row or column with no
      wrong pair adds nothing
    Returns:
    - loss: float
    - cache: for max_margin_ranking_backward
    """
    op = "max_margin_ranking_forward"
    xp = backend.get_array_module(S, op=op)
    _check_ndim(op, "S", S, 2, "(N, N)")
    N = S.shape[0]
    _check_shape(op, "S", S, (N, N))
    _check_float(op, S=S)
    true = xp.diagonal(S)
    off = 1 - xp.eye(N, dtype=S.dtype)
    if ignore is not None:
        _check_shape(op, "ignore", ignore, (N, N))
        off = off * (1 - xp.asarray(ignore, dtype=S.dtype))
    rows = xp.maximum(0, S - true[:, None] + margin) * off    # (N, N) sentences l for image k
    cols = xp.maximum(0, S - true[None, :] + margin) * off    # (N, N) images l for sentence k (column k)
    if hardest:
        # The hardest wrong pair is the highest-scoring one (the same for every margin);
        # keep one hinge per row / column. A row with no wrong pair picks a pair that
        # `off` has already zeroed.
        wrong = xp.where(off > 0, S, -xp.inf)                  # (N, N)
        index = xp.arange(N)
        rows = rows * (index[None, :] == wrong.argmax(axis=1)[:, None])
        cols = cols * (index[:, None] == wrong.argmax(axis=0)[None, :])
    loss = float((rows.sum() + cols.sum()) / N)
    return loss, (rows > 0, cols > 0, N, S.dtype)


def max_margin_ranking_backward(cache):
    """Backward pass of max_margin_ranking_forward (the loss is the output: no dout).

    Returns: dS (N, N)
    """
    rows, cols, N, dtype = cache
    xp = backend.get_array_module(rows)
    rows, cols = rows.astype(dtype), cols.astype(dtype)    # boolean + would be a logical or
    dS = rows + cols
    dS[xp.diag_indices(N)] -= rows.sum(axis=1) + cols.sum(axis=0)
    return dS / N
