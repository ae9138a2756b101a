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
boolean ("is every image done?") goes to the host per step. The chosen words
are traced back on the host once at the end.

Beam search (as in Show and Tell / Show, Attend and Tell):
    - rows are (image, beam) pairs, N * beam_size of them; at the first step
      only beam 0 of each image is alive (the others start at -inf), so no two
      beams start with the same word;
    - at each step, a live beam's <END> extension that ranks among the
      image's beam_size best extensions is a finished caption: it is kept
      aside (the best one per image, by normalised score). The beam_size best
      NON-<END> extensions of the image's beams become the new live beams
      (state rows reordered with `take` along axis 0). With beam_size 1 this
      is exactly greedy decoding;
    - an image is done once its best finished caption scores at least as well
      as any live beam could still reach (log-probabilities only decrease, so
      the bound is the best live score, divided by max_length ** alpha when
      length_alpha > 0); decoding stops when every image is done or after
      max_length steps. Stopping early this way returns the same caption as
      running all max_length steps with the same beam;
    - an image with no finished caption at all still gets one: its best live
      beam after max_length steps (several public implementations crash here).
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
    parts = [decode(features[start:start + batch_size]) for start in range(0, len(features), batch_size)]
    return DecodeResult(
        sequences=[seq for part in parts for seq in part.sequences],
        scores=numpy.concatenate([part.scores for part in parts]),
        finished=numpy.concatenate([part.finished for part in parts]),
        attention=None if parts[0].attention is None
        else [a for part in parts for a in part.attention])


def greedy_decode(model, features, start_id, end_id, max_length=20, batch_size=None):
    """Greedy decoding: at each step every image takes its most probable word.

    Inputs:
    - model: implements init_decode_state / decode_step (module docstring).
    - features: the images' features, leading axis N.
    - start_id, end_id: ids of <START> and <END>.
    - max_length: number of decoding steps (tokens including <END>).
    - batch_size: decode at most this many images at once (None: all).
    Returns: DecodeResult (scores = log-probabilities).
    """
    _check_positive_int(max_length, "max_length", "greedy_decode")
    if batch_size is not None:
        _check_positive_int(batch_size, "batch_size", "greedy_decode")
    return _in_chunks(lambda f: _greedy(model, f, start_id, end_id, max_length), features, batch_size)


def _greedy(model, features, start_id, end_id, max_length):
    op = "greedy_decode"
    state = model.init_decode_state(features)
    num_images, xp = _check_state(state, op)
    words = xp.full(num_images, start_id, dtype=xp.int64)
    finished = xp.zeros(num_images, dtype=bool)
    lengths = xp.full(num_images, max_length, dtype=xp.int64)   # words per caption
    scores = None
    word_history, attention_history = [], []
    for step in range(max_length):
        log_probs, state, attention = model.decode_step(words, state)
        if step == 0:
            _check_step_output(log_probs, num_images, start_id, end_id, op)
            scores = xp.zeros(num_images, dtype=log_probs.dtype)
        words = log_probs.argmax(axis=1)
        word_log_probs = xp.take_along_axis(log_probs, words[:, None], axis=1)[:, 0]
        # Images that already ended keep stepping (one batched call) but add nothing.
        scores += xp.where(finished, 0, word_log_probs)
        ends_now = ~finished & (words == end_id)
        lengths = xp.where(ends_now, step, lengths)
        finished |= ends_now
        word_history.append(words)
        attention_history.append(attention)
        if bool(finished.all()):
            break
    steps = len(word_history)
    lengths = backend.to_numpy(xp.minimum(lengths, steps))
    tokens = backend.to_numpy(xp.stack(word_history, axis=1))          # (N, steps)
    attention = None
    if attention_history[0] is not None:
        weights = backend.to_numpy(xp.stack(attention_history, axis=1))  # (N, steps, L)
        attention = [weights[i, :lengths[i]] for i in range(num_images)]
    return DecodeResult(
        sequences=[tokens[i, :lengths[i]].tolist() for i in range(num_images)],
        scores=backend.to_numpy(scores).astype(numpy.float64),
        finished=backend.to_numpy(finished),
        attention=attention)


def beam_search(model, features, start_id, end_id, beam_size=3, max_length=20,
                length_alpha=0.0, batch_size=None):
    """Batched beam search (see the module docstring for the exact rules).

    Inputs:
    - model: implements init_decode_state / decode_step (module docstring).
    - features: the images' features, leading axis N.
    - start_id, end_id: ids of <START> and <END>.
    - beam_size: live hypotheses per image.
    - max_length: number of decoding steps (tokens including <END>).
    - length_alpha: >= 0; captions are ranked by log-prob / length ** alpha.
    - batch_size: decode at most this many images at once (None: all).
    Returns: DecodeResult (scores = length-normalised log-probabilities).
    """
    op = "beam_search"
    _check_positive_int(beam_size, "beam_size", op)
    _check_positive_int(max_length, "max_length", op)
    if batch_size is not None:
        _check_positive_int(batch_size, "batch_size", op)
    if not float(length_alpha) >= 0:
        raise ValueError(f"{op}: length_alpha must be >= 0, got {length_alpha!r}")
    return _in_chunks(lambda f: _beam(model, f, start_id, end_id, beam_size, max_length,
                                      float(length_alpha)), features, batch_size)


def _top_k(scores, k, xp):
    """Indices and values of the k largest entries of each row of scores (N, M), best first."""
    candidates = xp.argpartition(-scores, k - 1, axis=1)[:, :k]   # unordered top k, O(M)
    values = xp.take_along_axis(scores, candidates, axis=1)
    order = xp.argsort(-values, axis=1)
    return xp.take_along_axis(candidates, order, axis=1), xp.take_along_axis(values, order, axis=1)


def _beam(model, features, start_id, end_id, beam_size, max_length, alpha):
    op = "beam_search"
    state = model.init_decode_state(features)
    num_images, xp = _check_state(state, op)
    rows = num_images * beam_size
    # Row i * beam_size + b is beam b of image i.
    state = {key: xp.repeat(value, beam_size, axis=0) for key, value in state.items()}
    words = xp.full(rows, start_id, dtype=xp.int64)
    image_index = xp.arange(num_images)

    # Best finished caption per image: its normalised score, the step at which
    # it emitted <END>, and the live beam (before that step) it came from.
    best_score = xp.full(num_images, -numpy.inf)
    best_step = xp.zeros(num_images, dtype=xp.int64)
    best_beam = xp.zeros(num_images, dtype=xp.int64)
    word_history, parent_history, attention_history = [], [], []
    future_divisor = max_length ** alpha if alpha > 0 else 1.0

    for step in range(max_length):
        log_probs, new_state, attention = model.decode_step(words, state)
        if step == 0:
            vocab_size = _check_step_output(log_probs, rows, start_id, end_id, op)
            # Only beam 0 is alive at first: the other beams would duplicate it.
            beam_scores = xp.full((num_images, beam_size), -numpy.inf, dtype=log_probs.dtype)
            beam_scores[:, 0] = 0
        candidates = beam_scores[:, :, None] + log_probs.reshape(num_images, beam_size, vocab_size)

        # A live beam's <END> extension is a finished caption of step + 1 tokens
        # when it ranks among the image's beam_size best extensions (the usual
        # rule; it makes beam_size 1 exactly greedy).
        flat = candidates.reshape(num_images, -1)
        kth_best = xp.partition(flat, flat.shape[1] - beam_size, axis=1)[:, -beam_size]
        end_raw = candidates[:, :, end_id]
        end_score = xp.where(end_raw >= kth_best[:, None], end_raw / (step + 1) ** alpha, -numpy.inf)
        end_beam = end_score.argmax(axis=1)
        end_best = end_score[image_index, end_beam]
        better = end_best > best_score
        best_score = xp.where(better, end_best, best_score)
        best_step = xp.where(better, step, best_step)
        best_beam = xp.where(better, end_beam, best_beam)

        # The beam_size best non-<END> extensions over all beams of an image live on.
        candidates[:, :, end_id] = -numpy.inf
        flat_index, beam_scores = _top_k(candidates.reshape(num_images, -1), beam_size, xp)
        parents = flat_index // vocab_size                                 # (N, beam)
        words = (flat_index % vocab_size).reshape(rows)
        source_rows = (image_index[:, None] * beam_size + parents).reshape(rows)
        # Entries the step passed through unchanged are the same for every beam
        # of an image: no copy needed.
        state = {key: value if value is state[key] else xp.take(value, source_rows, axis=0)
                 for key, value in new_state.items()}
        word_history.append(words.reshape(num_images, beam_size))
        parent_history.append(parents)
        attention_history.append(attention)

        # Done when nothing alive can still beat the best finished caption.
        if bool((best_score >= beam_scores[:, 0] / future_divisor).all()):
            break

    return _trace_back(xp, word_history, parent_history, attention_history,
                       best_score, best_step, best_beam, beam_scores, alpha)


def _trace_back(xp, word_history, parent_history, attention_history,
                best_score, best_step, best_beam, beam_scores, alpha):
    """Follow parent pointers back from each image's chosen hypothesis (on the host)."""
    steps = len(word_history)
    tokens = backend.to_numpy(xp.stack(word_history))          # (steps, N, beam)
    parents = backend.to_numpy(xp.stack(parent_history))       # (steps, N, beam)
    finished = backend.to_numpy(best_score > -numpy.inf)
    num_images = tokens.shape[1]
    images = numpy.arange(num_images)
    # A finished caption that emitted <END> at step s has s words, the last one
    # chosen at step s - 1 into beam best_beam. Otherwise: live beam 0 (the
    # best) after the last step, with `steps` words.
    last_step = numpy.where(finished, backend.to_numpy(best_step) - 1, steps - 1)
    beam = numpy.where(finished, backend.to_numpy(best_beam), 0)
    unfinished_score = backend.to_numpy(beam_scores[:, 0]).astype(numpy.float64) / steps ** alpha
    scores = numpy.where(finished, backend.to_numpy(best_score), unfinished_score)

    sequence_words = numpy.zeros((num_images, steps), dtype=numpy.int64)
    weights = None
    if attention_history[0] is not None:
        history = backend.to_numpy(xp.stack(attention_history))   # (steps, N * beam, L)
        history = history.reshape(steps, num_images, -1, history.shape[-1])
        weights = numpy.zeros((num_images, steps, history.shape[-1]), dtype=history.dtype)
    for step in range(steps - 1, -1, -1):
        on_path = step <= last_step
        parent = parents[step, images, beam]
        sequence_words[on_path, step] = tokens[step, images, beam][on_path]
        if weights is not None:
            # The word chosen at this step was predicted from its parent beam's row.
            weights[on_path, step] = history[step, images, parent][on_path]
        beam = numpy.where(on_path, parent, beam)
    lengths = last_step + 1
    return DecodeResult(
        sequences=[sequence_words[i, :lengths[i]].tolist() for i in range(num_images)],
        scores=scores.astype(numpy.float64),
        finished=finished,
        attention=None if weights is None else [weights[i, :lengths[i]] for i in range(num_images)])
