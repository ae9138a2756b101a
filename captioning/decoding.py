"""Turning a trained model into captions: batched greedy decoding and beam search.

The model interface (every captioning model implements these two methods):

    state = model.init_decode_state(features)
        features: whatever the model encodes images from, N images.
        state: dict name -> array, each with leading axis N (one row per
        image), on the model's backend (NumPy or CuPy).

    log_probs, new_state, attention = model.decode_step(words, state)
        words: (N,) integer array of the previous word of each row (<START>
        at the first step), on the same backend as the state.
        log_probs: (N, V) log-probabilities of the next word.
        new_state: dict with the same keys and leading axis N. An entry that
        the step does not change (the image features, their projection) must
        be passed through as the SAME object (`dict(state, h=h, c=c)` does
        this): beam search then knows it is constant per image and does not
        copy it when it reorders beams.
        attention: (N, L) attention weights used for this step's word, or None
        for a model without attention.

Lengths and scores (both decoders):
    - `max_length` is the number of decoding steps, i.e. of generated tokens
      counting <END>. A caption that ends has at most max_length - 1 words; a
      caption that never emits <END> has exactly max_length words.
    - A caption's log-probability is the sum of the log-probabilities of its
      generated tokens, <END> included when it ended.
    - Length normalisation (beam search): score = log-probability / length **
      length_alpha with length = number of generated tokens INCLUDING <END>
      (max_length for a caption that never ended). length_alpha = 0 ranks by
      log-probability; larger values favour longer captions.

Both decoders advance ALL images (and, for beam search, all images x all
beams) in ONE `decode_step` call per time step; the bookkeeping is array code
on the same backend (no Python loop over images or beams), and only one small
number (how many images are done) goes to the host per step. Images that are
done leave the batch once they make up an eighth of it, so later steps only
pay for captions still being written (results are unchanged: a done image
can no longer change its caption). The chosen words are traced back on the
host once at the end.

Beam search (as in Show and Tell / Show, Attend and Tell):
    - rows are (image, beam) pairs, N * beam_size of them; at the first step
      only beam 0 of each image is alive (the others start at -inf), so no two
      beams start with the same word;
    - at each step, a live beam's <END> extension that ranks among the
      image's beam_size best extensions is a finished caption: it is kept
      aside (the best one per image, by normalised score). The beam_size best
      NON-<END> extensions of the image's beams become the new live beams
      (state rows reordered with `take` along axis 0). With beam_size 1 and
      length_alpha 0 this is greedy decoding (up to exact ties between words;
      with length_alpha > 0 the single beam may go on past an <END> it
      scored and come back with a longer caption);
    - an image is done once its best finished caption scores at least as well
      as any live beam could still reach (log-probabilities only decrease, so
      the bound is the best live score, divided by max_length ** alpha when
      length_alpha > 0); decoding stops when every image is done or after
      max_length steps. Stopping early this way returns the same caption as
      running all max_length steps with the same beam;
    - an image with no finished caption at all still gets one: its best live
      beam after max_length steps (several public implementations crash here).

Blocking repeated n-grams (`no_repeat_ngram`, both decoders; 0 = off):
    self-critical (SCST) models learn to repeat phrases ("a man is sitting on
    a dock on a dock"). With no_repeat_ngram = n > 0, at every step each live
    hypothesis may not emit a word that would complete an n-gram already in
    its own words (<START> not counted): if its last n - 1 words occurred
    earlier followed by w, w gets log-probability -inf before the choice (the
    top-k of beam search, the argmax of greedy decoding). This is the
    `block_trigrams` of self-critical.pytorch (n = 3), Paulus et al. 2017 ("A
    Deep Reinforced Model for Abstractive Summarization") and Hugging Face's
    `no_repeat_ngram_size`. <END> is never blocked, so a hypothesis can always
    stop. Each row's words so far are kept as an (rows, step) array, reordered
    with the beams' parents and shrunk with the batch; the blocked words are
    found with array code (`_block_repeated_ngrams`). Scores stay the model's
    log-probabilities of the words chosen.

Forbidding dangling endings (`bad_ending_ids`, both decoders; empty = off):
    self-critical models also learn to stop mid-phrase ("a woman is sitting
    in front of a", "a dog is playing with a stick in the"), a known side effect of
    optimising CIDEr-D that cross-entropy models hardly show. With
    bad_ending_ids = the ids of words like "a", "in", "on", at every step
    each live hypothesis whose last word is one of them gets log-probability
    -inf for <END> before the choice, so it cannot stop there (it can still
    be cut by max_length, and ends unfinished). This is
    the `remove_bad_endings` of self-critical.pytorch; the word list is
    captioning.generation.BAD_ENDINGS. One exception keeps every hypothesis
    alive: if <END> is its only word left (no_repeat_ngram = 1 has blocked
    all the others, in a tiny vocabulary), <END> stays allowed. The last
    words are the decoders' `words` array, so the test is one lookup in a
    (V,) boolean table per row (`_block_bad_endings`, applied after the
    n-gram blocking). Scores stay the model's log-probabilities of the words
    chosen.
"""
from dataclasses import dataclass

import numpy

from nn import backend

__all__ = ["DecodeResult", "greedy_decode", "beam_search"]


@dataclass
class DecodeResult:
    """Output of a decoder for N images.

    - sequences: list of N lists of word ids, without <START> and <END>.
    - scores: numpy (N,) float64: the log-probability (greedy) or the
      length-normalised log-probability (beam search) of each caption.
    - finished: numpy (N,) bool: True where the caption ended with <END>.
    - attention: list of N numpy arrays (len(sequences[i]), L), row t the
      attention used to produce word t; None for a model without attention.
    """
    sequences: list
    scores: numpy.ndarray
    finished: numpy.ndarray
    attention: list = None

    @classmethod
    def concat(cls, parts):
        """One DecodeResult for the images of `parts` (results of consecutive batches), in order."""
        parts = list(parts)
        if not parts:
            return cls(sequences=[], scores=numpy.zeros(0), finished=numpy.zeros(0, dtype=bool))
        return cls(sequences=[seq for part in parts for seq in part.sequences],
                   scores=numpy.concatenate([part.scores for part in parts]),
                   finished=numpy.concatenate([part.finished for part in parts]),
                   attention=None if parts[0].attention is None
                   else [a for part in parts for a in part.attention])


def _check_positive_int(value, name, op):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 1:
        raise ValueError(f"{op}: {name} must be a positive int, got {value!r}")


def _check_state(state, op):
    """Return (N, xp) of a decode state, with a clear error when it is malformed."""
    if not isinstance(state, dict) or not state:
        raise TypeError(f"{op}: model.init_decode_state must return a non-empty dict of arrays, "
                        f"got {type(state).__name__}")
    sizes = {key: getattr(value, "shape", (None,))[0] if getattr(value, "ndim", 0) else None
             for key, value in state.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(f"{op}: every decode-state array needs the same leading axis N "
                         f"(one row per image); got leading sizes {sizes}")
    xp = backend.get_array_module(*state.values(), op=op)
    return next(iter(sizes.values())), xp


def _check_step_output(log_probs, rows, start_id, end_id, op):
    """Validate decode_step's log_probs (rows, V) and the token ids; return V."""
    if getattr(log_probs, "ndim", 0) != 2 or log_probs.shape[0] != rows:
        raise ValueError(f"{op}: model.decode_step must return log_probs of shape ({rows}, V), "
                         f"got {getattr(log_probs, 'shape', type(log_probs).__name__)}")
    vocab_size = log_probs.shape[1]
    for name, token in (("start_id", start_id), ("end_id", end_id)):
        if not 0 <= token < vocab_size:
            raise ValueError(f"{op}: {name}={token} is outside the vocabulary of size {vocab_size}")
    if vocab_size < 2:
        raise ValueError(f"{op}: a vocabulary needs <END> and at least one word, got size {vocab_size}")
    return vocab_size


def _in_chunks(decode, features, batch_size):
    """Run `decode(features_chunk)` on slices of at most batch_size images; merge results."""
    if batch_size is None or len(features) <= batch_size:
        return decode(features)
    return DecodeResult.concat(decode(features[start:start + batch_size])
                               for start in range(0, len(features), batch_size))


def _check_no_repeat_ngram(value, op):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value < 0:
        raise ValueError(f"{op}: no_repeat_ngram must be an int >= 0 (0 = off), got {value!r}")


def _block_repeated_ngrams(log_probs, prefix, n, xp):
    """Set to -inf the log-probability of every word that would repeat an n-gram of its row's prefix.

    Inputs:
    - log_probs: (R, V) next-word log-probabilities of R hypotheses.
    - prefix: (R, t) integer words generated so far by each row (no <START>).
    - n: n-gram size >= 1.
    Returns (R, V) log-probabilities (a new array; log_probs is not changed).

    The last n - 1 words of a row are compared with each of its earlier
    (n - 1)-word windows prefix[:, j:j + n - 1], j = 0 .. t - n; where they are
    equal, the word that followed that window, prefix[:, j + n - 1], is
    blocked. All rows and windows at once: (R, t - n + 1) comparisons.
    """
    num_rows, steps = prefix.shape
    num_windows = steps - n + 1
    if num_windows <= 0:
        return log_probs
    vocab_size = log_probs.shape[1]
    matches = xp.ones((num_rows, num_windows), dtype=bool)
    for k in range(n - 1):          # word k of the window vs word k of the last n - 1 words
        matches &= prefix[:, k:k + num_windows] == prefix[:, steps - n + 1 + k][:, None]
    followers = prefix[:, n - 1:]                                       # (R, num_windows)
    # Scatter into one spare column V where nothing matched, so that no row
    # needs a different number of entries (no boolean indexing, no host sync).
    blocked = xp.zeros((num_rows, vocab_size + 1), dtype=bool)
    blocked[xp.arange(num_rows)[:, None], xp.where(matches, followers, vocab_size)] = True
    return xp.where(blocked[:, :vocab_size], -numpy.inf, log_probs)


def _check_bad_ending_ids(ids, end_id, op):
    """The ids as a tuple of ints: a sequence of word ids >= 0, <END> not among them (a ValueError
    otherwise; the upper bound, the vocabulary size, is checked at the first step)."""
    if ids is None or isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise ValueError(f"{op}: bad_ending_ids must be a sequence of word ids (empty = off), got {ids!r}")
    ids = list(ids)
    if any(isinstance(i, bool) or not isinstance(i, (int, numpy.integer)) or i < 0 for i in ids):
        raise ValueError(f"{op}: bad_ending_ids must hold word ids (ints >= 0), got {ids!r}")
    if end_id in ids:
        raise ValueError(f"{op}: bad_ending_ids may not contain end_id={end_id}: <END> is not a word "
                         "a caption can end on")
    return tuple(int(i) for i in ids)


def _bad_ending_table(bad_ending_ids, vocab_size, xp, op):
    """(V,) bool, True at the ids of bad_ending_ids (None when there are none)."""
    if not bad_ending_ids:
        return None
    if max(bad_ending_ids) >= vocab_size:
        raise ValueError(f"{op}: bad_ending_ids has id {max(bad_ending_ids)}, outside the vocabulary "
                         f"of size {vocab_size}")
    table = xp.zeros(vocab_size, dtype=bool)
    table[xp.asarray(bad_ending_ids, dtype=xp.int64)] = True
    return table


def _block_bad_endings(log_probs, previous, is_bad, end_id, xp):
    """Set log p(<END>) to -inf in each row whose previous word is a bad ending.

    Inputs:
    - log_probs: (R, V) next-word log-probabilities of R hypotheses (n-gram
      blocking already applied).
    - previous: (R,) integer last word of each row (<START> at the first step).
    - is_bad: (V,) bool, True for the bad endings.
    - end_id: id of <END>.
    Returns (R, V) log-probabilities (a new array; log_probs is not changed).

    A row whose every other word is already -inf keeps its <END>, so that
    no hypothesis is left with nothing to say.
    """
    others = [part.max(axis=1) for part in (log_probs[:, :end_id], log_probs[:, end_id + 1:])
              if part.shape[1]]
    best_other = others[0] if len(others) == 1 else xp.maximum(*others)
    blocked = is_bad[previous] & (best_other > -numpy.inf)
    log_probs = log_probs.copy()
    log_probs[:, end_id] = xp.where(blocked, -numpy.inf, log_probs[:, end_id])
    return log_probs


def greedy_decode(model, features, start_id, end_id, max_length=20, batch_size=None, no_repeat_ngram=0,
                  bad_ending_ids=()):
    """Greedy decoding: at each step every image takes its most probable word.

    Inputs:
    - model: implements init_decode_state / decode_step (module docstring).
    - features: the images' features, leading axis N.
    - start_id, end_id: ids of <START> and <END>.
    - max_length: number of decoding steps (tokens including <END>).
    - batch_size: decode at most this many images at once (None: all).
    - no_repeat_ngram: n > 0 never completes an n-gram the caption already
      has (module docstring); 0 (default) blocks nothing.
    - bad_ending_ids: word ids a caption may not end on (<END> is forbidden
      right after them; module docstring); empty (default): none.
    Returns: DecodeResult (scores = log-probabilities).
    """
    _check_positive_int(max_length, "max_length", "greedy_decode")
    if batch_size is not None:
        _check_positive_int(batch_size, "batch_size", "greedy_decode")
    _check_no_repeat_ngram(no_repeat_ngram, "greedy_decode")
    bad_ending_ids = _check_bad_ending_ids(bad_ending_ids, end_id, "greedy_decode")
    return _in_chunks(lambda f: _greedy(model, f, start_id, end_id, max_length, no_repeat_ngram, bad_ending_ids),
                      features, batch_size)


def _drop_finished(done, num_done, state, words, active, group, xp):
    """Remove the rows of images that are done from the decoding batch.

    done: (n,) bool over the active images; num_done: how many are True (an
    int the caller already read); state: dict of (n * group, ...) arrays;
    words: (n * group,); active: (n,) ids of the active images; group: rows
    per image (1 for greedy, beam_size for beam search).
    Returns (kept image positions (m,), state, words, active) for the
    m = n - num_done images left, in their order. Every state entry is
    copied here, constant ones included.
    """
    # A stable sort puts the unfinished (False) first, in order. Unlike
    # xp.nonzero(~done), whose length the GPU would have to report back (a
    # second host sync), the number kept is known here already.
    keep = xp.argsort(done, kind="stable")[:len(done) - num_done]
    keep_rows = (keep[:, None] * group + xp.arange(group)).reshape(-1)
    state = {key: xp.take(value, keep_rows, axis=0) for key, value in state.items()}
    return keep, state, words[keep_rows], active[keep]


def _worth_dropping(num_done, num_active):
    """Drop finished images once they are an eighth of the batch: a smaller
    batch makes every later step cheaper, but dropping copies the state."""
    return num_done > 0 and num_done * 8 >= num_active


def _greedy(model, features, start_id, end_id, max_length, no_repeat_ngram=0, bad_ending_ids=()):
    op = "greedy_decode"
    state = model.init_decode_state(features)
    num_images, xp = _check_state(state, op)
    words = xp.full(num_images, start_id, dtype=xp.int64)
    active = xp.arange(num_images)                                # images still in the batch
    finished = xp.zeros(num_images, dtype=bool)
    scores = None
    history = []                                                  # per step: (active, words, attention)
    prefix = xp.zeros((num_images, 0), dtype=xp.int64)            # words so far (only for no_repeat_ngram)
    for step in range(max_length):
        log_probs, state, attention = model.decode_step(words, state)
        if step == 0:
            vocab_size = _check_step_output(log_probs, num_images, start_id, end_id, op)
            scores = xp.zeros(num_images, dtype=log_probs.dtype)
            is_bad_ending = _bad_ending_table(bad_ending_ids, vocab_size, xp, op)
        if no_repeat_ngram:
            log_probs = _block_repeated_ngrams(log_probs, prefix, no_repeat_ngram, xp)
        if is_bad_ending is not None:       # `words` still holds each row's previous word
            log_probs = _block_bad_endings(log_probs, words, is_bad_ending, end_id, xp)
        words = log_probs.argmax(axis=1)
        if no_repeat_ngram:
            prefix = xp.concatenate([prefix, words[:, None]], axis=1)
        history.append((active, words, attention))
        # Images that ended but are still in the batch add nothing more.
        was_finished = finished[active]
        step_log_probs = xp.take_along_axis(log_probs, words[:, None], axis=1)[:, 0]
        scores[active] += xp.where(was_finished, 0, step_log_probs)
        done = was_finished | (words == end_id)
        finished[active] = done
        num_done = int(done.sum())          # the step's one host read (tests/test_models_no_host_sync.py)
        if num_done == len(done):
            break
        if _worth_dropping(num_done, len(done)):
            keep, state, words, active = _drop_finished(done, num_done, state, words, active, 1, xp)
            prefix = prefix[keep]

    # Host side: lay the history out as (N, steps); a caption is the words
    # before its first <END> (all `steps` words if it never ended).
    steps = len(history)
    tokens = numpy.full((num_images, steps), end_id, dtype=numpy.int64)
    weights = None
    if history[0][2] is not None:
        weights = numpy.zeros((num_images, steps, history[0][2].shape[1]),
                              dtype=history[0][2].dtype)
    for step, (ids, chosen, attention) in enumerate(history):
        ids = backend.to_numpy(ids)
        tokens[ids, step] = backend.to_numpy(chosen)
        if weights is not None:
            weights[ids, step] = backend.to_numpy(attention)
    is_end = tokens == end_id
    lengths = numpy.where(is_end.any(axis=1), is_end.argmax(axis=1), steps)
    return DecodeResult(
        sequences=[tokens[i, :lengths[i]].tolist() for i in range(num_images)],
        scores=backend.to_numpy(scores).astype(numpy.float64),
        finished=backend.to_numpy(finished),
        attention=None if weights is None else [weights[i, :lengths[i]] for i in range(num_images)])


def beam_search(model, features, start_id, end_id, beam_size=3, max_length=20,
                length_alpha=0.0, batch_size=None, no_repeat_ngram=0, bad_ending_ids=()):
    """Batched beam search (see the module docstring for the exact rules).

    Inputs:
    - model: implements init_decode_state / decode_step (module docstring).
    - features: the images' features, leading axis N.
    - start_id, end_id: ids of <START> and <END>.
    - beam_size: live hypotheses per image.
    - max_length: number of decoding steps (tokens including <END>).
    - length_alpha: >= 0; captions are ranked by log-prob / length ** alpha.
    - batch_size: decode at most this many images at once (None: all).
    - no_repeat_ngram: n > 0: no hypothesis ever completes an n-gram it
      already has (module docstring); 0 (default) blocks nothing.
    - bad_ending_ids: word ids no hypothesis may end on (<END> is forbidden
      right after them; module docstring); empty (default): none.
    Returns: DecodeResult (scores = length-normalised log-probabilities).
    """
    op = "beam_search"
    _check_positive_int(beam_size, "beam_size", op)
    _check_positive_int(max_length, "max_length", op)
    if batch_size is not None:
        _check_positive_int(batch_size, "batch_size", op)
    if not float(length_alpha) >= 0:
        raise ValueError(f"{op}: length_alpha must be >= 0, got {length_alpha!r}")
    _check_no_repeat_ngram(no_repeat_ngram, op)
    bad_ending_ids = _check_bad_ending_ids(bad_ending_ids, end_id, op)
    return _in_chunks(lambda f: _beam(model, f, start_id, end_id, beam_size, max_length,
                                      float(length_alpha), no_repeat_ngram, bad_ending_ids),
                      features, batch_size)


def _top_k(scores, k, xp):
    """Indices and values of the k largest entries of each row of scores (n, M), best first."""
    if k > scores.shape[1]:   # argpartition's kth M - k < 0 would count from the end; argmax would repeat
        raise ValueError(f"top {k} of rows of {scores.shape[1]} entries")
    if xp is not numpy and k <= ARGMAX_TOP_K and backend.gpu_kernels_enabled():
        return _top_k_by_argmax(scores, k, xp)
    last = scores.shape[1] - k
    candidates = xp.argpartition(scores, last, axis=1)[:, last:]   # unordered top k, O(M)
    values = xp.take_along_axis(scores, candidates, axis=1)
    order = xp.argsort(values, axis=1)[:, ::-1]
    return xp.take_along_axis(candidates, order, axis=1), xp.take_along_axis(values, order, axis=1)


# Up to this many hypotheses per image, the GPU takes the top k by k argmax passes: CuPy's
# argpartition sorts whole rows (its documentation says so), here n rows of beam_size * V
# candidates (7.5 million numbers for 1000 images, beam 3, V 2500) at every step. Like the CUDA
# kernels, it has not yet run on a GPU, so it waits for the same switch (nn.backend.use_gpu_kernels).
ARGMAX_TOP_K = 8


def _top_k_by_argmax(scores, k, xp):
    """`_top_k` by k row-wise argmax passes, each masking its winners (for a small k on the GPU).

    -inf entries (dead beams, <END>, blocked words) are raised to the lowest finite number
    in the working copy, so that masked winners (-inf) rank below every entry not yet taken
    and the k indices of a row are distinct even when fewer than k entries are finite.
    Values come from `scores` itself. Exact ties go to the lowest index (argmax).
    """
    n = scores.shape[0]
    rows = xp.arange(n)
    work = xp.maximum(scores, xp.finfo(scores.dtype).min)      # a copy, -inf raised
    indices = xp.empty((n, k), dtype=xp.int64)
    for j in range(k):
        best = work.argmax(axis=1)
        indices[:, j] = best
        work[rows, best] = -numpy.inf
    return indices, xp.take_along_axis(scores, indices, axis=1)


def _beam(model, features, start_id, end_id, beam_size, max_length, alpha, no_repeat_ngram=0,
          bad_ending_ids=()):
    op = "beam_search"
    state = model.init_decode_state(features)
    num_images, xp = _check_state(state, op)
    # Row i * beam_size + b of the batch is beam b of the i-th active image.
    state = {key: xp.repeat(value, beam_size, axis=0) for key, value in state.items()}
    words = xp.full(num_images * beam_size, start_id, dtype=xp.int64)
    active = xp.arange(num_images)                  # ids of the images still in the batch

    # Best finished caption per image: its normalised score, the step at which
    # it emitted <END>, and the live beam (before that step) it came from.
    best_score = xp.full(num_images, -numpy.inf)
    best_step = xp.zeros(num_images, dtype=xp.int64)
    best_beam = xp.zeros(num_images, dtype=xp.int64)
    history = []                                    # per step: (active, words, parents, attention)
    future_divisor = max_length ** alpha if alpha > 0 else 1.0
    # Each row's words so far, (rows, step): kept only to block repeated n-grams.
    prefix = xp.zeros((num_images * beam_size, 0), dtype=xp.int64)

    for step in range(max_length):
        n = len(active)
        log_probs, new_state, attention = model.decode_step(words, state)
        if step == 0:
            vocab_size = _check_step_output(log_probs, n * beam_size, start_id, end_id, op)
            # Only beam 0 is alive at first: the other beams would duplicate it.
            beam_scores = xp.full((n, beam_size), -numpy.inf, dtype=log_probs.dtype)
            beam_scores[:, 0] = 0
            is_bad_ending = _bad_ending_table(bad_ending_ids, vocab_size, xp, op)
        if no_repeat_ngram:
            log_probs = _block_repeated_ngrams(log_probs, prefix, no_repeat_ngram, xp)
        if is_bad_ending is not None:       # `words`: each live beam's last word
            log_probs = _block_bad_endings(log_probs, words, is_bad_ending, end_id, xp)
        candidates = beam_scores[:, :, None] + log_probs.reshape(n, beam_size, vocab_size)
        end_raw = candidates[:, :, end_id].copy()

        # The beam_size best non-<END> extensions over all beams of an image live on.
        candidates[:, :, end_id] = -numpy.inf
        flat_index, beam_scores = _top_k(candidates.reshape(n, -1), beam_size, xp)
        parents = flat_index // vocab_size                                 # (n, beam)
        words = (flat_index % vocab_size).reshape(-1)
        source_rows = (xp.arange(n)[:, None] * beam_size + parents).reshape(-1)
        # Entries the step passed through unchanged are the same for every beam
        # of an image: no copy needed.
        state = {key: value if value is state[key] else xp.take(value, source_rows, axis=0)
                 for key, value in new_state.items()}
        if no_repeat_ngram:
            prefix = xp.concatenate([prefix[source_rows], words[:, None]], axis=1)
        history.append((active, words.reshape(n, beam_size), parents, attention))

        _keep_best_finished(end_raw, beam_scores, step, alpha, active, (best_score, best_step, best_beam), xp)

        # An image is done when nothing alive can still beat its best finished
        # caption; done images leave the batch (in groups, see _worth_dropping).
        done = (best_score[active] > -numpy.inf) & (best_score[active] >= beam_scores[:, 0] / future_divisor)
        num_done = int(done.sum())          # the step's one host read (tests/test_models_no_host_sync.py)
        if num_done == n:
            break
        if _worth_dropping(num_done, n):
            keep, state, words, active = _drop_finished(done, num_done, state, words, active, beam_size, xp)
            beam_scores = beam_scores[keep]
            if no_repeat_ngram:
                prefix = prefix.reshape(n, beam_size, -1)[keep].reshape(len(keep) * beam_size, -1)

    # Images never finished are still in the batch: their best live beam is beam 0.
    final_live_score = xp.full(num_images, -numpy.inf, dtype=beam_scores.dtype)
    final_live_score[active] = beam_scores[:, 0]
    return _trace_back(history, num_images, beam_size, best_score, best_step, best_beam,
                       final_live_score, alpha)


def _keep_best_finished(end_raw, beam_scores, step, alpha, active, best, xp):
    """Record, per active image, its best caption finished at this step if it beats the one kept.

    A live beam's <END> extension is a finished caption of step + 1 tokens
    when it ranks among the image's beam_size best extensions (the usual
    rule; it makes beam_size 1 exactly greedy). Those best extensions are
    among the new live beams (beam_scores (n, beam)) and the <END> extensions
    (end_raw (n, beam)), so the beam_size-th best score overall is found in
    these 2 * beam_size numbers. best: (score, step, beam) arrays over all
    images, updated in place at `active`.
    """
    best_score, best_step, best_beam = best
    beam_size = beam_scores.shape[1]
    kth_best = xp.sort(xp.concatenate([beam_scores, end_raw], axis=1), axis=1)[:, beam_size]
    end_score = xp.where(end_raw >= kth_best[:, None], end_raw / (step + 1) ** alpha, -numpy.inf)
    end_beam = end_score.argmax(axis=1)
    end_best = end_score[xp.arange(len(end_beam)), end_beam]
    previous = best_score[active]
    better = end_best > previous
    best_score[active] = xp.where(better, end_best, previous)
    best_step[active] = xp.where(better, step, best_step[active])
    best_beam[active] = xp.where(better, end_beam, best_beam[active])


def _trace_back(history, num_images, beam_size, best_score, best_step, best_beam,
                final_live_score, alpha):
    """Follow parent pointers back from each image's chosen hypothesis (on the host)."""
    steps = len(history)
    tokens = numpy.zeros((steps, num_images, beam_size), dtype=numpy.int64)
    parents = numpy.zeros((steps, num_images, beam_size), dtype=numpy.int64)
    weights_history = None
    if history[0][3] is not None:
        num_locations = history[0][3].shape[1]
        weights_history = numpy.zeros((steps, num_images, beam_size, num_locations),
                                      dtype=history[0][3].dtype)
    for step, (ids, chosen, parent, attention) in enumerate(history):
        ids = backend.to_numpy(ids)
        tokens[step, ids] = backend.to_numpy(chosen)
        parents[step, ids] = backend.to_numpy(parent)
        if weights_history is not None:
            weights_history[step, ids] = backend.to_numpy(attention).reshape(len(ids), beam_size, -1)

    finished = backend.to_numpy(best_score > -numpy.inf)
    images = numpy.arange(num_images)
    # A finished caption that emitted <END> at step s has s words, the last one
    # chosen at step s - 1 into beam best_beam. Otherwise: live beam 0 (the
    # best) after the last step, with `steps` words.
    last_step = numpy.where(finished, backend.to_numpy(best_step) - 1, steps - 1)
    beam = numpy.where(finished, backend.to_numpy(best_beam), 0)
    unfinished_score = backend.to_numpy(final_live_score).astype(numpy.float64) / steps ** alpha
    scores = numpy.where(finished, backend.to_numpy(best_score), unfinished_score)

    sequence_words = numpy.zeros((num_images, steps), dtype=numpy.int64)
    weights = None
    if weights_history is not None:
        weights = numpy.zeros((num_images, steps, weights_history.shape[-1]), dtype=weights_history.dtype)
    for step in range(steps - 1, -1, -1):
        on_path = step <= last_step
        parent = parents[step, images, beam]
        sequence_words[on_path, step] = tokens[step, images, beam][on_path]
        if weights is not None:
            # The word chosen at this step was predicted from its parent beam's row.
            weights[on_path, step] = weights_history[step, images, parent][on_path]
        beam = numpy.where(on_path, parent, beam)
    lengths = last_step + 1
    return DecodeResult(
        sequences=[sequence_words[i, :lengths[i]].tolist() for i in range(num_images)],
        scores=scores.astype(numpy.float64),
        finished=finished,
        attention=None if weights is None else [weights[i, :lengths[i]] for i in range(num_images)])
