"""Lesson 10: decoding - greedy versus beam search, and length normalisation.

A trained captioner gives p(next word | image, words so far). The caption we
want is the most probable whole sequence, argmax_S p(S | I), but there are
V^T sequences. Greedy decoding takes the single most probable word at each
step; beam search (used by Show and Tell, Vinyals et al. 2015, and Show,
Attend and Tell, Xu et al. 2015) keeps the k best partial captions instead.

To SEE where greedy goes wrong we decode a tiny hand-written "model": a table
of next-word probabilities, one table per image. It implements the same two
methods every captioning model in `captioning.models` does
(`init_decode_state`, `decode_step`), so the real decoders in
`captioning.decoding` run on it unchanged.
"""
import itertools
import math

import numpy

from captioning.decoding import beam_search, greedy_decode
from nn import backend

TITLE = "Decoding: greedy versus beam search, length normalisation, where greedy goes wrong"
SECONDS = 0.5

# `python run_lesson.py 10 --exercise`: write it yourself (graded by grade_beam_search_one_image and step 4)
EXERCISES = ["beam_search_one_image"]
EXERCISE_IMPORTS = ["from nn import backend"]

WORDS = ["<NULL>", "<START>", "<END>", "a", "the", "dog", "cat", "man", "big", "runs"]
START, END = WORDS.index("<START>"), WORDS.index("<END>")

# Next-word probabilities, per image: {previous word: {next word: probability}}.
# Unlisted words share what is left, so every row sums to 1.
IMAGES = {
    "image 0 (the greedy trap)": {
        "<START>": {"a": 0.5, "the": 0.4},
        "a": {"dog": 0.32, "cat": 0.3, "man": 0.28},     # after "a" the model is unsure...
        "the": {"dog": 0.9},                           # ...after "the" it is sure
        "dog": {"<END>": 0.9}, "cat": {"<END>": 0.9}, "man": {"<END>": 0.9},
    },
    "image 1 (short versus long)": {
        "<START>": {"dog": 0.3, "a": 0.65},
        "a": {"big": 0.6}, "big": {"dog": 0.6},
        "dog": {"<END>": 0.9},
    },
}


def probability_tables():
    """(images, V, V) array: tables[i, prev, next] = p(next | prev) for image i."""
    V = len(WORDS)
    tables = numpy.zeros((len(IMAGES), V, V))
    for i, rules in enumerate(IMAGES.values()):
        for prev in range(V):
            listed = rules.get(WORDS[prev], {})
            rest = [w for w in range(2, V) if WORDS[w] not in listed]    # never <NULL> or <START>
            for word, p in listed.items():
                tables[i, prev, WORDS.index(word)] = p
            tables[i, prev, rest] = (1 - sum(listed.values())) / len(rest)
    return tables


class TableModel:
    """A 'captioner' whose next-word probabilities come from a table per image.

    features: (N,) image numbers. The decode state carries them unchanged.
    """

    def __init__(self, tables):
        with numpy.errstate(divide="ignore"):        # log(0) = -inf: never said
            self.log_tables = backend.asarray(numpy.log(tables))

    def init_decode_state(self, features):
        return {"image": features}

    def decode_step(self, words, state):
        log_probs = self.log_tables[state["image"], words]       # (N, V)
        return log_probs, state, None


def show(result, index):
    """A decoded caption, the decoder's score and the caption's probability p(words, <END> | image)."""
    tokens = [START] + list(result.sequences[index]) + ([END] if result.finished[index] else [])
    tables = probability_tables()
    p = math.prod(tables[index, a, b] for a, b in zip(tokens[:-1], tokens[1:]))
    words = " ".join(WORDS[w] for w in result.sequences[index])
    return f"{words!r}  (decoder score {result.scores[index]:.4f}, p = {p:.4f})"


def step_1_the_model(ctx):
    """A tiny model with two images, decoded in ONE batch.

    For image 0, "a" is the likelier first word, but after "a" the model
    hesitates between three nouns; after "the" it is sure of "dog". Both
    decoders advance all images together: one `decode_step` call per time
    step for the whole batch (and, in beam search, for all its beams).
    """
    tables = probability_tables()
    ctx.model = TableModel(tables)
    ctx.features = backend.asarray(numpy.arange(len(IMAGES)))
    ctx.check(numpy.allclose(tables.sum(axis=2), 1), "each row is a probability distribution")
    def row(image, word):
        return {w: round(float(p), 3) for w, p in zip(WORDS, tables[image, WORDS.index(word)]) if p > 0}
    return {"vocabulary": WORDS, "p(next | <START>), image 0": row(0, "<START>"),
            "p(next | 'a'), image 0": row(0, "a"), "p(next | 'the'), image 0": row(0, "the")}


def step_2_greedy(ctx):
    """Greedy decoding: always take the most probable next word.

    Image 0: greedy commits to "a" (0.5 > 0.4) and is then stuck with a
    noun of probability 0.32 at best: p("a dog <END>") = 0.5 * 0.32 * 0.9 = 0.144.
    """
    ctx.greedy = greedy_decode(ctx.model, ctx.features, START, END, max_length=6)
    return {name: show(ctx.greedy, i) for i, name in enumerate(IMAGES)}


def step_3_beam_search(ctx):
    """Beam search keeps the k best partial captions at every step.

    With k = 2, "the" survives the first step as the runner-up, and
    "the dog <END>" (0.4 * 0.9 * 0.9 = 0.324) beats everything that starts
    with "a". Beam size 1 is exactly greedy decoding.
    """
    ctx.beam = beam_search(ctx.model, ctx.features, START, END, beam_size=2, max_length=6)
    beam_1 = beam_search(ctx.model, ctx.features, START, END, beam_size=1, max_length=6)
    ctx.check(ctx.beam.scores[0] > ctx.greedy.scores[0], "beam search finds a more probable caption")
    ctx.check(beam_1.sequences == ctx.greedy.sequences, "beam size 1 = greedy")
    return {name: show(ctx.beam, i) for i, name in enumerate(IMAGES)}


def beam_search_one_image(model, feature, start_id, end_id, beam_size, max_length):
    """Beam search for ONE image, written plainly: returns (words, log-probability) of its caption.

    The same rules as the batched `captioning.decoding.beam_search` with
    length_alpha = 0. A hypothesis is (log p, words, decode state). At each
    step every live hypothesis is extended by every word; of all the
    extensions, ranked by log p, those ending in <END> that are among the
    beam_size best are finished captions (the best one is kept), and the
    beam_size best others are the new live hypotheses. Stop when the best
    finished caption beats every live one (log p can only drop), or after
    max_length steps; with nothing finished, the best live one is the caption.

    Inputs:
    - model: implements init_decode_state / decode_step
    - feature: the image's features with a leading axis of 1 (one image)
    - start_id, end_id: ids of <START> and <END>
    - beam_size: live hypotheses kept; max_length: steps (tokens counting <END>)
    Returns: (words, log_p): list of word ids without <START> / <END>, float
    """
    live, best = [(0.0, [], model.init_decode_state(feature))], None
    for _ in range(max_length):
        extensions = []
        for log_p, words, state in live:
            previous = backend.asarray([words[-1] if words else start_id], dtype="int64")
            log_probs, new_state, _ = model.decode_step(previous, state)
            for word, word_log_p in enumerate(backend.to_numpy(log_probs[0]).tolist()):
                extensions.append((log_p + word_log_p, words + [word], new_state))
        extensions.sort(key=lambda extension: extension[0], reverse=True)
        for log_p, words, _ in extensions[:beam_size]:
            if words[-1] == end_id and (best is None or log_p > best[1]):
                best = (words[:-1], log_p)
        live = [extension for extension in extensions if extension[1][-1] != end_id][:beam_size]
        if best is not None and best[1] >= live[0][0]:
            break
    return best if best is not None else (live[0][1], live[0][0])


def step_4_one_image_at_a_time(ctx):
    """Beam search written plainly, one image at a time, against the batched one.

    `beam_search_one_image` (printed below) is beam search as you would
    write it first: Python lists of hypotheses, one `decode_step` call per
    hypothesis and step. `captioning.decoding.beam_search` runs the same
    rules on all images and all beams together, in arrays (one call per
    step), which is what makes it fast. Both must give the same captions
    and log-probabilities, for every beam size.
    """
    ctx.show_source(beam_search_one_image)
    rows = {}
    for beam_size in (1, 2, 3):
        batched = beam_search(ctx.model, ctx.features, START, END, beam_size=beam_size, max_length=6)
        for i, name in enumerate(IMAGES):
            words, log_p = beam_search_one_image(ctx.model, ctx.features[i:i + 1], START, END, beam_size, 6)
            ctx.check(words == batched.sequences[i] and abs(log_p - batched.scores[i]) < 1e-9,
                      f"beam size {beam_size}, {name}: one-image {words} {log_p} vs batched "
                      f"{batched.sequences[i]} {batched.scores[i]}")
            rows[f"beam size {beam_size}, {name}"] = f"{' '.join(WORDS[w] for w in words)!r} (log p {log_p:.4f})"
    return rows


def step_5_brute_force(ctx):
    """Is it the best? Enumerate every caption of up to 4 tokens and compare.

    Here the search space is small enough to list: every sequence of up to 3
    content words followed by <END> (the count is printed below). In a real
    model (V ~ 2500, T ~ 16) it never is, which is why we need a search.
    """
    tables = probability_tables()
    content = range(3, len(WORDS))
    best, mass = {}, {}
    for image in range(len(IMAGES)):
        candidates = []
        for length in range(0, 4):
            for words in itertools.product(content, repeat=length):
                sequence = (START,) + words + (END,)
                log_p = sum(math.log(tables[image, a, b]) for a, b in zip(sequence[:-1], sequence[1:]))
                candidates.append((log_p, words))
        best[image] = max(candidates)
        mass[list(IMAGES)[image]] = sum(math.exp(log_p) for log_p, _ in candidates)
    # the listed captions exclude only longer ones, so their probabilities add up to at most 1
    ctx.check(all(0 < m <= 1 + 1e-12 for m in mass.values()), "caption probabilities add up to at most 1")
    for image in best:
        ctx.check(tuple(ctx.beam.sequences[image]) == best[image][1], "beam search found the most probable caption")
    found = {f"most probable caption, {name}": f"{' '.join(WORDS[w] for w in best[i][1])!r} "
                                               f"(log p {best[i][0]:.4f})"
             for i, name in enumerate(IMAGES)}
    return {"candidate captions per image": len(candidates), **found,
            "probability of all listed captions together": {name: round(m, 4) for name, m in mass.items()}}


def step_6_length_normalisation(ctx):
    """Length normalisation: every extra word multiplies in a probability < 1.

    So ranking by log p favours short captions. Image 1: "dog" (0.3 * 0.9 =
    0.27) beats "a big dog" (0.65 * 0.6 * 0.6 * 0.9 = 0.21). Dividing the
    log-probability by length^alpha (length counting <END>) removes some of
    that bias; alpha = 1 ranks by the mean log-probability per token. (The
    decoder score below is log p / length^alpha; p is the caption's
    probability.)
    """
    rows = {}
    for alpha in (0.0, 0.7, 1.0):
        result = beam_search(ctx.model, ctx.features, START, END, beam_size=3, max_length=6, length_alpha=alpha)
        rows[f"alpha = {alpha}"] = show(result, 1)
        if alpha == 0.0:
            short = result.sequences[1]
        long = result.sequences[1]
    ctx.check(len(long) > len(short), "normalisation lets the longer caption win")
    return rows


def grade_beam_search_one_image(ctx, mine, reference):
    """Your captions against the batched beam_search: the table model of this lesson and a small untrained
    Show and Tell (random features, 12 words), beam sizes 1 to 4."""
    from captioning.models import ShowAndTell
    lstm = ShowAndTell({"vocab_size": 12, "feature_dim": 6, "wordvec_dim": 8, "hidden_dim": 16}, seed=3)
    cases = [(TableModel(probability_tables()), backend.asarray(numpy.arange(len(IMAGES))), START, END),
             (lstm, backend.asarray(numpy.random.default_rng(0).standard_normal((5, 6)), dtype="float32"), 1, 2)]
    checked = 0
    for model, features, start, end in cases:
        for beam_size in (1, 2, 3, 4):
            batched = beam_search(model, features, start, end, beam_size=beam_size, max_length=7)
            for i in range(len(features)):
                words, log_p = mine.beam_search_one_image(model, features[i:i + 1], start, end, beam_size, 7)
                ctx.check(list(words) == batched.sequences[i] and abs(log_p - batched.scores[i]) < 1e-4,
                          f"{type(model).__name__}, image {i}, beam size {beam_size}: yours {list(words)} "
                          f"(log p {log_p:.4f}), batched {batched.sequences[i]} ({batched.scores[i]:.4f})")
                checked += 1
    return f"all {checked} captions match the batched beam search"


if __name__ == "__main__":  # python lessons/lesson_10_decoding.py [--no-pause]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
