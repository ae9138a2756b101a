"""Lesson 12: measuring captions - BLEU by hand, then corpus BLEU and CIDEr-D.

There is no single right caption, so a generated caption is compared with
several human ones. BLEU (Papineni et al. 2002) counts shared n-grams;
CIDEr-D (Vedantam et al. 2015) weights n-grams by how specific they are to
this image. Show, Attend and Tell (Xu et al. 2015) and Karpathy & Fei-Fei
(2015) report BLEU-1..4 on Flickr8k (Show and Tell, Vinyals et al. 2015,
only BLEU-1); `captioning.metrics` computes corpus BLEU as coco-caption's
scorer does.

Scales: `metrics.bleu` returns fractions in [0, 1] and `metrics.cider_d`
numbers around 0..10 (its definition multiplies by 10). Papers, the README
and `python -m captioning evaluate` print both x100 (BLEU-4 0.509 is
printed 50.9, CIDEr-D 0.546 is 54.6), and so do the lessons: every score
labelled "x100" is the library's value times 100. Precisions and
similarities are left as fractions.
"""
import math
from collections import Counter

import numpy

from captioning.data import load_flickr8k, shapes_splits
from captioning.metrics import bleu, cider_d, cider_d_per_image, ngram_counts

TITLE = "Measuring captions: BLEU by hand on a tiny example, then corpus BLEU and CIDEr-D"
SECONDS = 3

REFERENCES = ["the cat is on the mat", "there is a cat on the mat"]   # Papineni et al.'s example

# `python run_lesson.py 12 --exercise`: write these yourself (graded by grade_<name> below and steps 1-2)
EXERCISES = ["modified_precision", "brevity_penalty"]
EXERCISE_IMPORTS = ["import math", "from collections import Counter"]


def modified_precision(hypothesis, references, n):
    """Clipped n-gram matches of one hypothesis, and its number of n-grams.

    Each n-gram of the hypothesis counts as a match at most as often as it
    occurs in the ONE reference that has it most often.

    Inputs:
    - hypothesis: list of words
    - references: list of reference captions, each a list of words
    - n: the n-gram order (1 = words, 2 = pairs of neighbours, ...)
    Returns (matches, total): ints; the precision is matches / total.
    """
    grams = Counter(tuple(hypothesis[i:i + n]) for i in range(len(hypothesis) - n + 1))
    clip = Counter()
    for ref in references:
        clip |= Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))   # |= keeps the larger count
    return sum(min(count, clip[gram]) for gram, count in grams.items()), sum(grams.values())


def brevity_penalty(hypothesis_length, reference_lengths):
    """BLEU's brevity penalty for one hypothesis.

    r = the reference length closest to the hypothesis length c (a tie goes
    to the SHORTER reference); BP = 1 if c > r, else exp(1 - r / c), and 0
    for an empty hypothesis (c = 0).

    Inputs:
    - hypothesis_length: c, an int >= 0
    - reference_lengths: list of ints, one per reference
    Returns: BP, a float in [0, 1].
    """
    if hypothesis_length == 0:
        return 0.0
    r = min(reference_lengths, key=lambda length: (abs(length - hypothesis_length), length))
    return 1.0 if hypothesis_length > r else math.exp(1 - r / hypothesis_length)


def step_1_modified_precision(ctx):
    """Modified n-gram precision: count matches, but no more often than a reference has them.

    Plain precision would give the absurd candidate "the the the the the the
    the" 7/7 (every word occurs in a reference). BLEU clips each word's count
    by its largest count in any ONE reference: "the" appears at most twice,
    so the modified unigram precision is 2/7. (`modified_precision` is at
    the top of this lesson's file; `--exercise` lets you write it.)
    """
    candidate = "the the the the the the the".split()
    references = [r.split() for r in REFERENCES]
    plain = sum(word in references[0] or word in references[1] for word in candidate) / len(candidate)
    matches, total = modified_precision(candidate, references, 1)
    clipped = matches / total
    bleu_1 = bleu([REFERENCES], [" ".join(candidate)], max_n=1)[0]
    ctx.check(abs(clipped - 2 / 7) < 1e-12 and abs(bleu_1 - clipped) < 1e-12, "BLEU-1 is 2/7 here")
    return {"plain precision": plain, "modified precision": clipped, "metrics.bleu, BLEU-1": bleu_1,
            "the same, x100 as printed in papers": round(100 * bleu_1, 2)}


def step_2_bleu_by_hand(ctx):
    """BLEU-4 by hand: the geometric mean of p1..p4, times a brevity penalty.

    BLEU-N = BP * (p1 * p2 * ... * pN) ** (1/N). Precision alone would reward
    very short captions ("the cat" has p1 = 1), so BP = exp(1 - r/c) when the
    candidate (length c) is shorter than the closest reference length r,
    and 1 otherwise (`brevity_penalty`, at the top of the file).
    """
    candidate = "the cat is on a mat".split()
    short = "the cat".split()
    references = [r.split() for r in REFERENCES]

    def bleu_by_hand(words, max_n):
        bp = brevity_penalty(len(words), [len(ref) for ref in references])
        precisions = [m / t for m, t in (modified_precision(words, references, n) for n in range(1, max_n + 1))]
        return bp * math.exp(sum(math.log(p) for p in precisions) / max_n), precisions, bp

    ours, precisions, bp = bleu_by_hand(candidate, 4)
    library = bleu([REFERENCES], [" ".join(candidate)])[3]
    short_score, _, short_bp = bleu_by_hand(short, 2)
    ctx.check(abs(ours - library) < 1e-12, "hand-computed BLEU-4 = metrics.bleu")
    ctx.check(abs(short_score - bleu([REFERENCES], ["the cat"], max_n=2)[1]) < 1e-12, "BLEU-2 of 'the cat'")
    return {"candidate": " ".join(candidate), "p1..p4": numpy.round(precisions, 4), "brevity penalty": bp,
            "BLEU-4 x100 by hand": round(100 * ours, 2), "BLEU-4 x100 by metrics.bleu": round(100 * library, 2),
            "'the cat': brevity penalty": short_bp, "'the cat': BLEU-2 x100": round(100 * short_score, 2)}


def step_3_corpus_bleu(ctx):
    """Corpus BLEU adds up counts over all images before dividing.

    Papers report corpus BLEU: clipped matches and n-gram totals (and the
    lengths for BP) are summed over the whole test set, then combined once.
    It is NOT the mean of per-image BLEU scores: one caption without any
    4-gram match has sentence BLEU-4 = 0 but still adds to the corpus counts.
    """
    references = [REFERENCES, ["a dog runs on the grass", "a brown dog is running on grass"]]
    hypotheses = ["there is a cat on the mat", "a dog running on the grass"]
    corpus = bleu(references, hypotheses)
    per_image = [bleu([r], [h]) for r, h in zip(references, hypotheses)]
    mean_of_sentences = numpy.mean([s[3] for s in per_image])
    ctx.check(abs(corpus[3] - mean_of_sentences) > 1e-3, "corpus BLEU-4 differs from the mean")
    return {"corpus BLEU-1..4 x100": numpy.round(100 * numpy.array(corpus), 2),
            "image 1 alone": numpy.round(100 * numpy.array(per_image[0]), 2),
            "image 2 alone": numpy.round(100 * numpy.array(per_image[1]), 2),
            "mean of per-image BLEU-4 x100": round(100 * float(mean_of_sentences), 2)}


CIDER_REFERENCES = [
    ["a dog runs on the grass", "a brown dog running on grass", "the dog is running in grass"],
    ["a man rides a bike on the road", "a cyclist on the road", "a man is riding a bicycle"],
    ["two children play in the water", "kids splash in a pool", "two kids are playing in the water"],
]


def step_4_cider_idf(ctx):
    """CIDEr-D: n-grams weighted by TF-IDF, so words every caption uses count little.

    IDF(g) = log(number of images) - log(number of images whose references
    contain g). "a" and "the" occur for every image and get weight 0;
    "dog" is specific to one image and gets log(3). A caption is scored by
    the cosine similarity of its TF-IDF vector with each reference's
    (n = 1..4, averaged), with clipping and a Gaussian length penalty
    exp(-delta^2 / 2 sigma^2), sigma = 6; times 10.
    """
    documents = [set().union(*(ngram_counts(ref.split(), 1) for ref in refs)) for refs in CIDER_REFERENCES]
    def idf(word):
        return math.log(len(documents)) - math.log(max(1, sum((word,) in doc for doc in documents)))
    weights = {word: idf(word) for word in ["a", "the", "on", "dog", "grass", "running"]}
    ctx.check(weights["a"] == 0 and abs(weights["dog"] - math.log(3)) < 1e-12, "IDF as defined")
    return {f"IDF('{w}')": round(v, 4) for w, v in weights.items()}


def step_5_cider_by_hand(ctx):
    """CIDEr with unigrams only, by hand, against metrics.cider_d.

    For one image: vector g_h of the hypothesis, g_r of each reference
    (word count x IDF); similarity sum_w min(g_h[w], g_r[w]) * g_r[w] /
    (|g_h| |g_r|); mean over references; times 10. The length penalty
    measures length in bigrams (as coco-caption does), and with unigrams
    only there are none, so here it is exp(0) = 1 whatever the lengths.
    """
    hypothesis = "a brown dog runs on grass"
    documents = [set().union(*(ngram_counts(ref.split(), 1) for ref in refs)) for refs in CIDER_REFERENCES]
    def vector(caption):
        return {g: c * (math.log(3) - math.log(sum(g in doc for doc in documents) or 1))
                for g, c in ngram_counts(caption.split(), 1).items()}
    hyp = vector(hypothesis)
    similarities = []
    for ref_caption in CIDER_REFERENCES[0]:
        ref = vector(ref_caption)
        dot = sum(min(w, ref.get(g, 0.0)) * ref.get(g, 0.0) for g, w in hyp.items())
        norms = math.sqrt(sum(w * w for w in hyp.values())) * math.sqrt(sum(w * w for w in ref.values()))
        similarities.append(dot / norms)
    by_hand = 10 * numpy.mean(similarities)
    hypotheses = [hypothesis, "a man rides a bike", "two kids play in water"]
    library = cider_d_per_image(CIDER_REFERENCES, hypotheses, max_n=1)[0]
    ctx.check(abs(by_hand - library) < 1e-10, "hand-computed unigram CIDEr = metrics")
    return {"similarity to each reference": numpy.round(similarities, 4),
            "CIDEr (unigrams) by hand": float(by_hand), "metrics.cider_d_per_image(max_n=1)": float(library)}


GENERIC_REFERENCES = [
    ["a man is standing in front of a red car", "a man stands next to a red car",
     "a man in a hat is standing by a car"],
    ["a woman is standing in front of a shop", "a woman waits outside a shop window",
     "a woman in a coat stands by a store"],
    ["a dog is standing in front of a door", "a black dog waits at the door", "a dog stands by a wooden door"],
]


def step_6_specific_beats_generic(ctx):
    """Why CIDEr: a generic caption can beat a right one on BLEU-4 and still score 0 on CIDEr-D.

    Three photos whose human captions share a stock phrase, "is standing in
    front of a". A captioner that says the same safe sentence for every
    photo collects those 4-grams everywhere and gets a high BLEU-4, without
    saying anything about THIS photo. CIDEr-D's IDF weight of an n-gram that
    occurs for every image is 0, so the generic caption gets nothing; the
    specific captions (the man by the red car, ...) win.
    """
    specific = ["a man stands by a red car", "a woman waits outside a shop", "a black dog at a wooden door"]
    generic = ["someone is standing in front of a building"] * 3
    scores = {}
    for name, hyps in [("specific", specific), ("generic", generic)]:
        b = bleu(GENERIC_REFERENCES, hyps)
        scores[name] = {"BLEU-1 x100": round(100 * b[0], 1), "BLEU-4 x100": round(100 * b[3], 1),
                        "CIDEr-D x100": round(100 * cider_d(GENERIC_REFERENCES, hyps), 1)}
    ctx.check(scores["generic"]["BLEU-4 x100"] > scores["specific"]["BLEU-4 x100"], "generic wins on BLEU-4")
    ctx.check(scores["specific"]["CIDEr-D x100"] > 2 * scores["generic"]["CIDEr-D x100"], "specific wins on CIDEr-D")
    return scores


def step_7_how_good_are_humans(ctx):
    """What the numbers mean: score one human caption against the other four.

    Scores depend on the data and on the number of references, so a useful
    yardstick is a human: for every test image, caption 1 is the hypothesis
    and captions 2-5 the references. (Published machine scores use all 5
    references and are not directly comparable.) Uses Flickr8k's test split
    when the data is found, else the synthetic shapes.
    """
    test = None
    if ctx.data is not None and ctx.data.is_dir():
        try:
            test, source = load_flickr8k(ctx.data).splits["test"], "Flickr8k test split"
        except FileNotFoundError as exc:
            print(f"{ctx.data} is not usable as Flickr8k ({exc}); using the synthetic shapes.")
    if test is None:
        test, source = shapes_splits(n_train=1, n_val=1, n_test=500)["test"], "synthetic shapes test split"
    references = [captions[1:] for captions in test.captions]
    hypotheses = [captions[0] for captions in test.captions]
    human = bleu(references, hypotheses)
    human_cider = cider_d(references, hypotheses)
    ctx.check(0 < human[3] < 1, "a BLEU score is in (0, 1)")
    return {"data": f"{source}, {len(test)} images",
            "human BLEU-1..4 x100": numpy.round(100 * numpy.array(human), 1),
            "human CIDEr-D x100": round(100 * human_cider, 1)}


def random_sentences(seed, count=200):
    """(hypothesis, references) pairs of random short sentences over a 6-word vocabulary, for grading."""
    gen = numpy.random.default_rng(seed)
    words = "a dog cat runs on grass".split()
    def sentence(low):
        return [str(w) for w in gen.choice(words, size=int(gen.integers(low, 9)))]
    return [(sentence(0), [sentence(1) for _ in range(int(gen.integers(1, 4)))]) for _ in range(count)]


def grade_modified_precision(ctx, mine, reference):
    """Your (matches, total) against the reference on 200 random sentences, n = 1..4."""
    for hypothesis, references in random_sentences(0):
        for n in range(1, 5):
            yours, wanted = mine.modified_precision(hypothesis, references, n), reference(hypothesis, references, n)
            ctx.check(tuple(yours) == tuple(wanted), f"hypothesis {hypothesis}, references {references}, n={n}: "
                                                     f"you return {yours}, the reference {wanted}")
    return "all 800 cases match"


def grade_brevity_penalty(ctx, mine, reference):
    """Your BP against the reference on 200 random sentences (empty ones and ties included)."""
    cases = [(len(h), [len(r) for r in refs]) for h, refs in random_sentences(1)] + [(0, [3]), (4, [3, 5]), (6, [6])]
    for c, lengths in cases:
        yours, wanted = mine.brevity_penalty(c, lengths), reference(c, lengths)
        ctx.check(abs(yours - wanted) < 1e-12, f"c={c}, reference lengths {lengths}: you return {yours}, "
                                               f"the reference {wanted}")
    return f"all {len(cases)} cases match"


if __name__ == "__main__":  # python lessons/lesson_12_metrics.py [--no-pause] [--data DIR]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
