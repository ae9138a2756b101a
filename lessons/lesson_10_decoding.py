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
SECONDS = 0.7

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


def step_4_brute_force(ctx):
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


def step_5_length_normalisation(ctx):
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


if __name__ == "__main__":  # python lessons/lesson_10_decoding.py [--no-pause]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
