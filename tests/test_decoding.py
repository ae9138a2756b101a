"""Greedy decoding and beam search on tiny fake models (no training involved)."""
import itertools

import numpy
import pytest

from captioning.data.text import Vocabulary
from captioning.decoding import beam_search, greedy_decode
from captioning.generation import BAD_ENDINGS, bad_ending_ids
from nn import backend

START, END = 0, 1


class TinyRecurrentModel:
    """A random recurrent language model with attention, for testing decoders.

    h0 = tanh(features @ W_init); each step: attention = softmax over L "cells"
    of h @ W_att, h = tanh(W_embed[word] + h @ W_h + features @ W_feat), log-probs =
    log_softmax(h @ W_out * sharpness). `features` is kept in the state and
    passed through unchanged (a per-image constant, like real image features).
    end_bias is added to the <END> score; never_end: <END> gets probability 0.
    """

    def __init__(self, xp, vocab_size=5, hidden=6, feature_dim=3, cells=4, sharpness=2.0,
                 end_bias=0.0, never_end=False, seed=0):
        rng = numpy.random.default_rng(seed)
        shapes = {"W_init": (feature_dim, hidden), "W_embed": (vocab_size, hidden),
                  "W_h": (hidden, hidden), "W_feat": (feature_dim, hidden),
                  "W_out": (hidden, vocab_size), "W_att": (hidden, cells)}
        self.params = {k: xp.asarray(rng.normal(size=s)) for k, s in shapes.items()}
        self.sharpness, self.end_bias, self.never_end, self.xp = sharpness, end_bias, never_end, xp

    def init_decode_state(self, features):
        return {"h": self.xp.tanh(features @ self.params["W_init"]), "features": features}

    def decode_step(self, words, state):
        xp, p = self.xp, self.params
        h, features = state["h"], state["features"]
        att_scores = h @ p["W_att"]
        attention = xp.exp(att_scores - att_scores.max(axis=1, keepdims=True))
        attention /= attention.sum(axis=1, keepdims=True)
        h = xp.tanh(p["W_embed"][words] + h @ p["W_h"] + features @ p["W_feat"])
        scores = h @ p["W_out"] * self.sharpness
        scores[:, END] += self.end_bias
        if self.never_end:
            scores[:, END] = -numpy.inf
        shifted = scores - scores.max(axis=1, keepdims=True)
        log_probs = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        return log_probs, dict(state, h=h), attention


def run_model(model, features_row, words):
    """Teacher-force `words` (ending with END or not) for one image: (log-prob, attention rows)."""
    xp = model.xp
    state = model.init_decode_state(features_row[None])
    previous, total, rows = START, 0.0, []
    for word in words:
        log_probs, state, attention = model.decode_step(xp.asarray([previous]), state)
        total += float(log_probs[0, word])
        rows.append(backend.to_numpy(attention[0]))
        previous = word
    return total, numpy.array(rows)


def features_for(xp, num_images, seed=1, dim=3):
    return xp.asarray(numpy.random.default_rng(seed).normal(size=(num_images, dim)))


def test_beam_size_one_equals_greedy(xp):
    model = TinyRecurrentModel(xp, vocab_size=7, sharpness=1.5)
    features = features_for(xp, 12)
    greedy = greedy_decode(model, features, START, END, max_length=8)
    beam = beam_search(model, features, START, END, beam_size=1, max_length=8)
    assert greedy.sequences == beam.sequences
    numpy.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-12)
    numpy.testing.assert_array_equal(beam.finished, greedy.finished)
    assert greedy.finished.any() and not greedy.finished.all()   # both kinds of caption exercised


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_wide_beam_finds_the_brute_force_best_caption(xp, alpha):
    # Vocabulary: START (0, also usable as a word), END (1), words 2..4.
    # max_length 4 -> every finished caption is k <= 3 words + END:
    # 1 + 4 + 16 + 64 = 85 candidates. A step never has more than 64 live
    # prefixes x 5 tokens = 320 extensions, so a beam of 320 prunes nothing.
    max_length, words = 4, [0, 2, 3, 4]
    # end_bias makes the best captions 1-3 words long (greedy never ends here).
    model = TinyRecurrentModel(xp, vocab_size=5, sharpness=1.0, end_bias=-1.0, seed=8)
    features = features_for(xp, 4, seed=4)
    result = beam_search(model, features, START, END, beam_size=320, max_length=max_length,
                         length_alpha=alpha)
    assert sorted(len(s) for s in result.sequences) == [1, 3, 3, 3]
    greedy = greedy_decode(model, features, START, END, max_length=max_length)
    assert greedy.sequences != result.sequences
    for image in range(4):
        best_caption, best_score = None, -numpy.inf
        for length in range(max_length):
            for caption in itertools.product(words, repeat=length):
                log_prob, _ = run_model(model, features[image], list(caption) + [END])
                score = log_prob / (length + 1) ** alpha
                if score > best_score:
                    best_caption, best_score = list(caption), score
        assert result.sequences[image] == best_caption
        assert result.scores[image] == pytest.approx(best_score, rel=1e-10)
        assert result.finished[image]


def test_beam_scores_equal_the_model_log_probability_of_the_caption(xp):
    # The score a beam of 3 reports is the model's own log-probability of the
    # caption it returns: beams, their states and their words stay together
    # through the reordering. Long captions (several reorderings) and
    # unfinished ones are both exercised.
    model = TinyRecurrentModel(xp, vocab_size=5, sharpness=1.0, end_bias=-1.0, seed=8)
    features = features_for(xp, 6, seed=4)
    result = beam_search(model, features, START, END, beam_size=3, max_length=10)
    assert result.finished.any() and not result.finished.all()
    assert max(len(s) for s in result.sequences) == 10
    for image in range(6):
        ending = [END] if result.finished[image] else []
        log_prob, _ = run_model(model, features[image], result.sequences[image] + ending)
        assert result.scores[image] == pytest.approx(log_prob, rel=1e-10)


def test_model_that_never_ends_still_gets_captions(xp):
    model = TinyRecurrentModel(xp, vocab_size=6, never_end=True)
    features = features_for(xp, 4)
    for result in (greedy_decode(model, features, START, END, max_length=5),
                   beam_search(model, features, START, END, beam_size=3, max_length=5,
                               length_alpha=0.5)):
        assert [len(s) for s in result.sequences] == [5] * 4
        assert not result.finished.any()
        assert all(END not in s for s in result.sequences)
        assert numpy.all(numpy.isfinite(result.scores))


def test_batched_decoding_equals_one_image_at_a_time(xp):
    model = TinyRecurrentModel(xp, vocab_size=8, sharpness=1.2, seed=7)
    features = features_for(xp, 5, seed=8)
    for decode in (lambda f, **kw: greedy_decode(model, f, START, END, max_length=9, **kw),
                   lambda f, **kw: beam_search(model, f, START, END, beam_size=4, max_length=9,
                                               length_alpha=0.3, **kw)):
        together = decode(features)
        chunked = decode(features, batch_size=2)
        assert chunked.sequences == together.sequences
        for image in range(5):
            alone = decode(features[image:image + 1])
            assert alone.sequences[0] == together.sequences[image]
            assert alone.scores[0] == pytest.approx(together.scores[image], rel=1e-10)
            numpy.testing.assert_allclose(alone.attention[0], together.attention[image], rtol=1e-10)


def test_attention_rows_belong_to_the_generated_words(xp):
    # Row t of the returned attention is the attention the model used when it
    # produced word t: re-running the model on the caption reproduces it.
    model = TinyRecurrentModel(xp, vocab_size=5, cells=9, sharpness=1.0, end_bias=-1.0, seed=8)
    features = features_for(xp, 6, seed=4)
    for result in (greedy_decode(model, features, START, END, max_length=10),
                   beam_search(model, features, START, END, beam_size=3, max_length=10)):
        assert sum(len(s) for s in result.sequences) >= 20
        for image in range(6):
            words = result.sequences[image]
            assert result.attention[image].shape == (len(words), 9)
            _, expected = run_model(model, features[image], words)
            numpy.testing.assert_allclose(result.attention[image], expected.reshape(-1, 9),
                                          rtol=1e-10)


def test_bad_arguments_are_refused():
    model = TinyRecurrentModel(numpy)
    features = features_for(numpy, 2)
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, features, START, END, beam_size=0)
    with pytest.raises(ValueError, match="length_alpha"):
        beam_search(model, features, START, END, length_alpha=-1)
    with pytest.raises(ValueError, match="end_id=9 is outside the vocabulary of size 5"):
        greedy_decode(model, features, START, 9)
    with pytest.raises(TypeError, match="dict"):
        greedy_decode(type("M", (), {"init_decode_state": lambda self, f: [f]})(), features, 0, 1)


def test_beam_search_does_not_copy_state_that_the_step_passes_through():
    # "features" is returned unchanged by decode_step, so every step sees the
    # very same array (no image ever finishes here, so none leaves the batch).
    model = TinyRecurrentModel(numpy, vocab_size=6, never_end=True)
    seen = []
    step = model.decode_step

    def recording_step(words, state):
        seen.append(state["features"])
        return step(words, state)

    model.decode_step = recording_step
    beam_search(model, features_for(numpy, 3), START, END, beam_size=2, max_length=8)
    assert len(seen) == 8 and all(f is seen[0] for f in seen)
    assert seen[0].shape == (6, 3)


def test_finished_images_leave_the_batch():
    # Captions of very different lengths: the batch must shrink as images
    # finish, and results must not change (compare with one image at a time).
    model = TinyRecurrentModel(numpy, vocab_size=5, sharpness=1.0, end_bias=-1.0, seed=8)
    features = features_for(numpy, 8, seed=4)
    for decode in (lambda f: greedy_decode(model, f, START, END, max_length=10),
                   lambda f: beam_search(model, f, START, END, beam_size=3, max_length=10)):
        batch_sizes = []
        step = model.decode_step

        def recording_step(words, state):
            batch_sizes.append(len(words))
            return step(words, state)

        model.decode_step = recording_step
        together = decode(features)
        model.decode_step = step
        assert batch_sizes[-1] < batch_sizes[0] and batch_sizes == sorted(batch_sizes, reverse=True)
        lengths = sorted(len(s) for s in together.sequences)
        assert len(set(lengths)) >= 3 and lengths[-1] == 10
        for image in range(8):
            alone = decode(features[image:image + 1])
            assert alone.sequences[0] == together.sequences[image]
            assert alone.scores[0] == pytest.approx(together.scores[image], rel=1e-10)
            numpy.testing.assert_allclose(alone.attention[0], together.attention[image], rtol=1e-10)


@pytest.mark.parametrize("kind", ["show-tell", "attention", "lrcn"])
def test_decoders_run_the_real_models(kind):
    # The contract with captioning.models: both models decode in batches, and a
    # beam's score is the model's own log-probability of the returned caption.
    from captioning import models
    config = {"model": kind, "vocab_size": 12, "feature_dim": 8, "wordvec_dim": 6, "hidden_dim": 7,
              "attention_dim": 5, "null_id": 0, "start_id": 1, "end_id": 2}
    model = models.build(config, seed=0, dtype=numpy.float64)
    model.eval()
    rng = numpy.random.default_rng(0)
    features = rng.normal(size=(5, 8) if models.MODELS[kind].feature_kind == "pooled" else (5, 4, 8))
    greedy = greedy_decode(model, features, 1, 2, max_length=6)
    beam = beam_search(model, features, 1, 2, beam_size=1, max_length=6)
    assert beam.sequences == greedy.sequences
    wide = beam_search(model, features, 1, 2, beam_size=4, max_length=6)
    for image in range(5):
        state = model.init_decode_state(features[image:image + 1])
        total, previous = 0.0, 1
        for word in wide.sequences[image] + ([2] if wide.finished[image] else []):
            log_probs, state, attention = model.decode_step(numpy.array([previous]), state)
            total, previous = total + log_probs[0, word], word
        assert wide.scores[image] == pytest.approx(total, rel=1e-10)
        if kind == "attention":
            assert wide.attention[image].shape == (len(wide.sequences[image]), 4)
            numpy.testing.assert_allclose(wide.attention[image].sum(axis=1), 1.0)
        else:
            assert wide.attention is None


# --- no_repeat_ngram: blocking repeated n-grams -------------------------------------------------

def repeated_ngram(words, n):
    """True when some n-gram occurs twice in words."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


class CycleModel:
    """A bigram model (log-probs depend on the previous word only) that loves the cycle 2 3 4 2 3 4 ...

    After START it says 2, after 2 -> 3, 3 -> 4, 4 -> 2; the runner-up after
    each of them is 5, then 5 -> 6 -> <END>. <END> is unlikely elsewhere, so
    undisturbed decoding repeats "2 3 4" until max_length. can_end=False:
    <END> has probability 0 (beam search then cannot settle for "2 5 6").
    """

    def __init__(self, xp, can_end=True):
        logits = numpy.full((7, 7), -1.0)
        logits[:, END] = -4.0
        for previous, following in ((START, 2), (2, 3), (3, 4), (4, 2)):
            logits[previous, following], logits[previous, 5] = 3.0, 2.0
        logits[5, 6] = logits[6, END] = 3.0
        if not can_end:
            logits[:, END] = -numpy.inf
        shifted = logits - logits.max(axis=1, keepdims=True)
        self.table = xp.asarray(shifted - numpy.log(numpy.exp(shifted).sum(axis=1, keepdims=True)))
        self.xp = xp

    def init_decode_state(self, features):
        return {"features": features}

    def decode_step(self, words, state):
        return self.table[words], state, None


def test_greedy_is_forced_off_a_repeated_ngram(xp):
    model = CycleModel(xp)
    features = features_for(xp, 2)
    plain = greedy_decode(model, features, START, END, max_length=9)
    assert plain.sequences[0] == [2, 3, 4, 2, 3, 4, 2, 3, 4] and not plain.finished[0]
    # n = 3: "2 3" again may not be followed by 4 (the trigram "2 3 4" exists): runner-up 5, then 6, <END>.
    assert greedy_decode(model, features, START, END, max_length=9,
                         no_repeat_ngram=3).sequences == [[2, 3, 4, 2, 3, 5, 6]] * 2
    # n = 2: the second 2 may not be followed by 3.
    assert greedy_decode(model, features, START, END, max_length=9,
                         no_repeat_ngram=2).sequences == [[2, 3, 4, 2, 5, 6]] * 2
    # n = 1: no word twice.
    assert greedy_decode(model, features, START, END, max_length=9,
                         no_repeat_ngram=1).sequences == [[2, 3, 4, 5, 6]] * 2


def test_beam_search_is_forced_off_a_repeated_ngram(xp):
    model = CycleModel(xp, can_end=False)
    features = features_for(xp, 2)
    plain = beam_search(model, features, START, END, beam_size=2, max_length=9)
    assert plain.sequences[0] == [2, 3, 4, 2, 3, 4, 2, 3, 4]
    blocked = beam_search(model, features, START, END, beam_size=2, max_length=9, no_repeat_ngram=3)
    caption = blocked.sequences[0]
    assert len(caption) == 9 and not repeated_ngram(caption, 3) and caption[:5] == [2, 3, 4, 2, 3]
    # The score is still the model's log-probability of the caption returned.
    log_prob = sum(float(model.table[p, w]) for p, w in zip([START] + caption, caption))
    assert blocked.scores[0] == pytest.approx(log_prob, rel=1e-12)


def _next_log_probs(model, features_row, words):
    """The model's (V,) next-word log-probabilities after START + words, one image, recomputed from scratch."""
    state = model.init_decode_state(features_row[None])
    for previous in [START] + words:
        log_probs, state, _ = model.decode_step(model.xp.asarray([previous]), state)
    return backend.to_numpy(log_probs[0])


def _blocked(words, word, n):
    """Would `word` after `words` complete an n-gram that `words` already contain? (n = 0: never.)"""
    if n == 0 or len(words) < n - 1:
        return False
    grams = {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}
    return tuple(words[len(words) - n + 1:] + [word]) in grams


def _allowed(words, vocab_size, n, bad=()):
    """The next words a hypothesis may take: no repeated n-gram, and no <END> right after a word of
    `bad` (<START> counts as the previous word of the empty caption) unless <END> is all that is left."""
    allowed = [w for w in range(vocab_size) if not _blocked(words, w, n)]
    if ([START] + words)[-1] in bad and allowed != [END]:
        allowed = [w for w in allowed if w != END]
    return allowed


def reference_greedy(model, features_row, max_length, n, bad=()):
    words, total = [], 0.0
    for _ in range(max_length):
        log_probs = _next_log_probs(model, features_row, words)
        word = max(_allowed(words, len(log_probs), n, bad), key=lambda w: log_probs[w])
        total += log_probs[word]
        if word == END:
            return words, total, True
        words.append(word)
    return words, total, False


def reference_beam(model, features_row, beam_size, max_length, alpha, n, bad=()):
    """Beam search for one image, one hypothesis at a time, with the rules of the module docstring."""
    live = [(0.0, [])]
    best_score, best_words = -numpy.inf, None
    for step in range(max_length):
        extensions = []
        for score, words in live:
            log_probs = _next_log_probs(model, features_row, words)
            extensions += [(score + log_probs[w], words, w) for w in _allowed(words, len(log_probs), n, bad)]
        extensions.sort(key=lambda e: -e[0])
        for score, words, word in extensions[:beam_size]:     # an <END> among the best extensions
            if word == END and score / (step + 1) ** alpha > best_score:
                best_score, best_words = score / (step + 1) ** alpha, words
        live = [(score, words + [word]) for score, words, word in extensions if word != END][:beam_size]
        # (No live hypothesis left: n = 1 has blocked every word but <END>.)
        if not live or best_score >= live[0][0] / (max_length ** alpha if alpha > 0 else 1.0):
            return best_words, best_score, True
    if best_words is not None:
        return best_words, best_score, True
    return live[0][1], live[0][0] / max_length ** alpha, False


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_blocking_equals_a_one_hypothesis_at_a_time_reference(xp, n):
    # Random models, images of very different caption lengths (so images leave
    # the batch mid-way), beams reordered every step: the batched decoders
    # must give exactly the captions and scores of the slow reference.
    lengths = set()
    for seed, alpha in ((8, 0.0), (9, 0.6)):
        model = TinyRecurrentModel(xp, vocab_size=10, sharpness=1.5, end_bias=-0.5, seed=seed)
        features = features_for(xp, 7, seed=seed + 1)
        greedy = greedy_decode(model, features, START, END, max_length=12, no_repeat_ngram=n)
        beam = beam_search(model, features, START, END, beam_size=3, max_length=12, length_alpha=alpha,
                           no_repeat_ngram=n)
        for image in range(7):
            words, score, finished = reference_greedy(model, features[image], 12, n)
            assert greedy.sequences[image] == words and greedy.finished[image] == finished
            assert greedy.scores[image] == pytest.approx(score, rel=1e-10)
            words, score, finished = reference_beam(model, features[image], 3, 12, alpha, n)
            assert beam.sequences[image] == words and beam.finished[image] == finished
            assert beam.scores[image] == pytest.approx(score, rel=1e-10)
        lengths |= {len(s) for s in beam.sequences + greedy.sequences}
    assert len(lengths) >= 3 and max(lengths) >= 8


def test_blocked_decoders_never_repeat_an_ngram_and_zero_changes_nothing(xp):
    model = TinyRecurrentModel(xp, vocab_size=12, sharpness=2.5, end_bias=-3.0, seed=5)
    features = features_for(xp, 40, seed=6)
    for decode in (lambda **kw: greedy_decode(model, features, START, END, max_length=16, **kw),
                   lambda **kw: beam_search(model, features, START, END, beam_size=4, max_length=16,
                                            length_alpha=0.5, **kw)):
        plain, zero = decode(), decode(no_repeat_ngram=0)
        assert zero.sequences == plain.sequences
        numpy.testing.assert_array_equal(zero.scores, plain.scores)
        assert sum(repeated_ngram(s, 2) for s in plain.sequences) >= 5     # the model does repeat
        for n in (2, 3):
            result = decode(no_repeat_ngram=n)
            assert not any(repeated_ngram(s, n) for s in result.sequences)
            assert result.sequences != plain.sequences


def test_no_repeat_ngram_must_be_a_non_negative_int():
    model = TinyRecurrentModel(numpy)
    features = features_for(numpy, 2)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="no_repeat_ngram"):
            greedy_decode(model, features, START, END, no_repeat_ngram=bad)
        with pytest.raises(ValueError, match="no_repeat_ngram"):
            beam_search(model, features, START, END, no_repeat_ngram=bad)


# --- bad_ending_ids: no caption ends on "a", "in", "on" ... -------------------------------------

def test_bad_ending_ids_are_the_vocabulary_ids_of_the_listed_words():
    vocabulary = Vocabulary(["man", "a", "dog", "on", "the"])
    assert "a" in BAD_ENDINGS and "upon" in BAD_ENDINGS and "man" not in BAD_ENDINGS
    # In BAD_ENDINGS order ("a", "the", "on"); words the vocabulary lacks ("an", "in", ...) left out.
    assert bad_ending_ids(vocabulary) == tuple(vocabulary.word_to_id[w] for w in ("a", "the", "on"))
    assert bad_ending_ids(vocabulary, ["dog", "cat"]) == (vocabulary.word_to_id["dog"],)
    assert bad_ending_ids(Vocabulary(["man", "dog"])) == ()


class DanglingModel:
    """A bigram model over a real Vocabulary(["a", "man", "dog"]) whose likeliest caption is "a".

    After <START>: "a". After "a": <END> (the bad ending), then "a" again,
    then "man". After "man" or "dog": <END>. The special ids <NULL>, <START>,
    <UNK> are never said (probability 0), so with no_repeat_ngram = 1 a
    caption can run out of words.
    """

    def __init__(self, xp, after_a=None):
        self.vocabulary = Vocabulary(["a", "man", "dog"])
        ids = self.vocabulary.word_to_id
        self.start, self.end = self.vocabulary.start_id, self.vocabulary.end_id
        logits = numpy.full((7, 7), -2.0)
        logits[:, [self.vocabulary.null_id, self.start, self.vocabulary.unk_id]] = -numpy.inf
        logits[self.start, ids["a"]] = 3.0
        for word, logit in (after_a or {"<END>": 3.0, "a": 2.5, "man": 2.0}).items():
            logits[ids["a"], ids[word]] = logit
        logits[ids["man"], self.end] = logits[ids["dog"], self.end] = 3.0
        shifted = logits - logits.max(axis=1, keepdims=True)
        self.table = xp.asarray(shifted - numpy.log(numpy.exp(shifted).sum(axis=1, keepdims=True)))
        self.xp = xp

    def init_decode_state(self, features):
        return {"features": features}

    def decode_step(self, words, state):
        return self.table[words], state, None

    def words(self, result):
        return [" ".join(self.vocabulary.decode(seq)) for seq in result.sequences]

    def log_prob(self, words, finished):
        ids = [self.vocabulary.word_to_id[w] for w in words.split()] + ([self.end] if finished else [])
        return sum(float(self.table[p, w]) for p, w in zip([self.start] + ids, ids))


def _decoders(model, features, max_length, **options):
    """Greedy and beam-3 results of the same settings."""
    return (greedy_decode(model, features, model.start, model.end, max_length=max_length, **options),
            beam_search(model, features, model.start, model.end, beam_size=3, max_length=max_length,
                        **options))


def test_a_caption_never_ends_on_a_and_combines_with_no_repeat_ngram(xp):
    model = DanglingModel(xp)
    features = features_for(xp, 2)
    bad = bad_ending_ids(model.vocabulary)
    for result in _decoders(model, features, 6):
        assert model.words(result) == ["a"] * 2 and result.finished.all()     # the dangling "a"
    # no_repeat_ngram alone does not stop it (it never blocks <END>).
    for result in _decoders(model, features, 6, no_repeat_ngram=1):
        assert model.words(result) == ["a"] * 2

    # Blocked, <END> after "a" is gone. Greedy: "a" again is likelier than "man", every time, so
    # the caption runs to max_length without ending (max_length still cuts it) ...
    greedy, beam = _decoders(model, features, 6, bad_ending_ids=bad)
    assert model.words(greedy) == ["a a a a a a"] * 2 and not greedy.finished.any()
    assert greedy.scores[0] == pytest.approx(model.log_prob("a a a a a a", False), rel=1e-12)
    # ... beam search keeps "a man" <END> aside, which beats every longer caption.
    assert model.words(beam) == ["a man"] * 2 and beam.finished.all()
    assert beam.scores[0] == pytest.approx(model.log_prob("a man", True), rel=1e-12)
    # With repeated bigrams forbidden too, greedy's third "a" is out: "a a man"; no word twice: "a man".
    for n, caption in ((2, "a a man"), (1, "a man")):
        greedy, beam = _decoders(model, features, 6, bad_ending_ids=bad, no_repeat_ngram=n)
        assert model.words(greedy) == [caption] * 2 and greedy.finished.all()
        assert greedy.scores[0] == pytest.approx(model.log_prob(caption, True), rel=1e-12)
        assert model.words(beam) == ["a man"] * 2 and beam.finished.all()


def test_end_stays_allowed_when_it_is_the_only_word_left(xp):
    # After "a": <END>, then "a". With no word twice, "a a" is out, and
    # "man" / "dog" have probability 0 here: <END> is all that is left.
    model = DanglingModel(xp, after_a={"<END>": 3.0, "a": 2.5, "man": -numpy.inf, "dog": -numpy.inf})
    features = features_for(xp, 2)
    bad = bad_ending_ids(model.vocabulary)
    for result in _decoders(model, features, 6, bad_ending_ids=bad, no_repeat_ngram=1):
        assert model.words(result) == ["a"] * 2 and result.finished.all()
        assert result.scores[0] == pytest.approx(model.log_prob("a", True), rel=1e-12)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_bad_endings_equal_a_one_hypothesis_at_a_time_reference(xp, n):
    # As the no_repeat_ngram reference test, with ids 6 and 9, words these models like to end on,
    # as the bad endings (n = 1 also runs captions out of words: <END> is then all that is left).
    bad = (6, 9)
    changed, lengths = 0, set()
    for seed, alpha in ((8, 0.0), (9, 0.6)):
        model = TinyRecurrentModel(xp, vocab_size=10, sharpness=1.5, end_bias=-0.5, seed=seed)
        features = features_for(xp, 7, seed=seed + 1)
        greedy = greedy_decode(model, features, START, END, max_length=12, no_repeat_ngram=n,
                               bad_ending_ids=bad)
        beam = beam_search(model, features, START, END, beam_size=3, max_length=12, length_alpha=alpha,
                           no_repeat_ngram=n, bad_ending_ids=bad)
        for image in range(7):
            words, score, finished = reference_greedy(model, features[image], 12, n, bad)
            assert greedy.sequences[image] == words and greedy.finished[image] == finished
            assert greedy.scores[image] == pytest.approx(score, rel=1e-10)
            changed += words != reference_greedy(model, features[image], 12, n)[0]
            words, score, finished = reference_beam(model, features[image], 3, 12, alpha, n, bad)
            assert beam.sequences[image] == words and beam.finished[image] == finished
            assert beam.scores[image] == pytest.approx(score, rel=1e-10)
            changed += words != reference_beam(model, features[image], 3, 12, alpha, n)[0]
        lengths |= {len(s) for s in beam.sequences + greedy.sequences}
    assert changed >= 3                     # the bad endings did change captions
    assert len(lengths) >= 3


def test_no_caption_ends_on_a_bad_word_and_empty_changes_nothing(xp):
    model = TinyRecurrentModel(xp, vocab_size=12, sharpness=2.5, end_bias=-1.0, seed=5)
    features = features_for(xp, 40, seed=6)
    bad = (4, 5)
    for decode in (lambda **kw: greedy_decode(model, features, START, END, max_length=16, **kw),
                   lambda **kw: beam_search(model, features, START, END, beam_size=4, max_length=16,
                                            length_alpha=0.5, **kw)):
        plain, empty = decode(), decode(bad_ending_ids=())
        assert empty.sequences == plain.sequences
        numpy.testing.assert_array_equal(empty.scores, plain.scores)

        def bad_ends(result):
            return sum(bool(f) and bool(s) and s[-1] in bad for s, f in zip(result.sequences, result.finished))
        assert bad_ends(plain) >= 5                                        # the model does end on them
        for options in ({}, {"no_repeat_ngram": 2}):
            result = decode(bad_ending_ids=numpy.array(bad), **options)   # any sequence of ids
            # (Many captions still end, on other words.)
            assert bad_ends(result) == 0 and result.finished.sum() >= 15


def test_bad_ending_ids_must_be_word_ids():
    model = TinyRecurrentModel(numpy, vocab_size=5)
    features = features_for(numpy, 2)
    for bad in (None, 3, "a", [-1], [2.0], [True], [END], [3, END]):
        for decode in (greedy_decode, beam_search):
            with pytest.raises(ValueError, match="bad_ending_ids"):
                decode(model, features, START, END, bad_ending_ids=bad)
    for decode in (greedy_decode, beam_search):
        with pytest.raises(ValueError, match="bad_ending_ids has id 5, outside the vocabulary of size 5"):
            decode(model, features, START, END, bad_ending_ids=[2, 5])


# --- the GPU's top k: argmax passes instead of CuPy's full-row sort ----------------------------

def test_top_k_by_argmax_equals_the_partition_top_k_with_distinct_indices():
    from captioning.decoding import _top_k, _top_k_by_argmax
    rng = numpy.random.default_rng(3)
    scores = rng.standard_normal((6, 40))
    for k in (1, 3, 8):
        expected, got = _top_k(scores, k, numpy), _top_k_by_argmax(scores, k, numpy)
        assert (got[0] == expected[0]).all() and (got[1] == expected[1]).all()
    # a row with fewer finite entries than k (dead beams, blocked words) still gets k distinct indices
    scores[0, 2:] = -numpy.inf
    indices, values = _top_k_by_argmax(scores, 5, numpy)
    assert len(set(indices[0].tolist())) == 5 and set(indices[0, :2].tolist()) == {0, 1}
    assert numpy.isneginf(values[0, 2:]).all() and values.dtype == scores.dtype


def _beam_search_of_a_tiny_model(kind):
    """beam_search (beam 4, length 8, alpha 0.7, no repeated bigrams) of a float64 model of `kind`
    on 7 images, on the current backend: a function of nothing, to run once per top-k path."""
    from captioning import models
    config = {"model": kind, "vocab_size": 15, "feature_dim": 8, "wordvec_dim": 6, "hidden_dim": 7,
              "attention_dim": 5, "null_id": 0, "start_id": 1, "end_id": 2}
    model = models.build(config, seed=1, dtype=numpy.float64).eval().to_backend()
    rng = numpy.random.default_rng(1)
    features = backend.asarray(rng.normal(size=(7, 8) if model.feature_kind == "pooled" else (7, 4, 8)))
    return lambda: beam_search(model, features, 1, 2, beam_size=4, max_length=8, length_alpha=0.7,
                               no_repeat_ngram=2)


def _assert_same_decoding(got, expected):
    """The same captions, scores, finished flags and attention rows, to the last bit."""
    assert got.sequences == expected.sequences
    assert (got.scores == expected.scores).all() and (got.finished == expected.finished).all()
    for a, b in zip(got.attention or [], expected.attention or []):
        assert (a == b).all()


@pytest.mark.parametrize("kind", ["show-tell", "attention"])
def test_beam_search_with_the_gpu_top_k_finds_the_same_captions(kind, monkeypatch):
    """On the CPU, beam search run through the argmax top k (the GPU's) returns what it returns with
    argpartition: the same captions, scores and attention rows (no ties in real log-probabilities)."""
    from captioning import decoding
    decode = _beam_search_of_a_tiny_model(kind)
    expected = decode()
    monkeypatch.setattr(decoding, "_top_k", lambda scores, k, xp: decoding._top_k_by_argmax(scores, k, xp))
    _assert_same_decoding(decode(), expected)


def test_the_gpu_top_k_waits_for_the_gpu_kernels_switch(monkeypatch):
    """Not yet run on a GPU, the argmax top k is off by default like the CUDA kernels; NumPy never
    takes it. A stand-in array module (NumPy under another name) plays the GPU's."""
    from captioning import decoding

    gpu_like = type("GpuLike", (), {"__getattr__": lambda self, name: getattr(numpy, name)})()
    taken = []
    by_argmax = decoding._top_k_by_argmax
    monkeypatch.setattr(decoding, "_top_k_by_argmax", lambda *a: taken.append(a[2]) or by_argmax(*a))
    scores = numpy.random.default_rng(0).standard_normal((3, 20))
    expected = decoding._top_k(scores, 3, numpy)
    before = backend.gpu_kernels_enabled()
    try:
        for on, xp, wanted in [(False, gpu_like, []), (True, numpy, []), (True, gpu_like, [gpu_like])]:
            backend.use_gpu_kernels(on)
            taken.clear()
            got = decoding._top_k(scores, 3, xp)
            assert taken == wanted and (got[0] == expected[0]).all() and (got[1] == expected[1]).all()
    finally:
        backend.use_gpu_kernels(before)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["show-tell", "attention"])
def test_beam_search_on_cupy_finds_the_same_captions_with_the_argmax_top_k(kind, cupy):
    """The argmax top k waits for NN_GPU_KERNELS, so the CuPy beam tests above run argpartition:
    this is its check on a GPU, against argpartition on the same device."""
    decode = _beam_search_of_a_tiny_model(kind)
    results = []
    before = backend.gpu_kernels_enabled()
    try:
        for on in (False, True):
            backend.use_gpu_kernels(on)
            results.append(decode())
    finally:
        backend.use_gpu_kernels(before)
    _assert_same_decoding(results[1], results[0])


def test_top_k_refuses_more_than_a_row_holds():
    """k > M: argpartition's negative kth would silently return a wrong set, so _top_k raises."""
    from captioning.decoding import _top_k, _top_k_by_argmax
    scores = numpy.array([[0.5, -numpy.inf]])
    with pytest.raises(ValueError):
        _top_k(scores, 3, numpy)
    assert list(_top_k(scores, 2, numpy)[0][0]) == [0, 1]
    assert list(_top_k_by_argmax(scores, 2, numpy)[0][0]) == [0, 1]
