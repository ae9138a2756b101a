"""BLEU and CIDEr-D on hand-computed cases; nltk equality when nltk is installed."""
import math
import random

import numpy
import pytest

from captioning import metrics


# ----------------------------------------------------------------- tokens

def test_normalize_tokens_lowercases_strips_punctuation_and_markers():
    assert metrics.normalize_tokens("<START> A Dog's t-shirt , is RED . <END>") == \
        ["a", "dogs", "tshirt", "is", "red"]
    assert metrics.normalize_tokens(["<start>", "Two", "dogs", "<NULL>", "."]) == ["two", "dogs"]


def test_strings_and_token_lists_give_the_same_bleu():
    refs = [["A dog runs on the grass .", "a dog is running"]]
    as_tokens = [[r.split() for r in refs[0]]]
    assert metrics.bleu(refs, ["A dog runs ."]) == metrics.bleu(as_tokens, [["a", "dog", "runs"]])


# ----------------------------------------------------------------- BLEU

def test_bleu_clips_by_max_count_in_a_single_reference():
    # hyp "the the the cat": unigram "the" appears 3 times; the refs hold it
    # 1 and 2 times, so it is clipped to 2 (not to their sum 3):
    # p1 = (2 + 1) / 4 = 3/4. Bigrams: "the the" x2 (clip 1 from ref 2),
    # "the cat" x1 (ref 1) -> p2 = 2/3.
    # Lengths: hyp 4, refs 2 and 3 -> closest 3; c > r so BP = 1.
    refs = [[["the", "cat"], ["the", "the", "dog"]]]
    scores = metrics.bleu(refs, [["the", "the", "the", "cat"]], max_n=2)
    assert scores[0] == pytest.approx(3 / 4, abs=1e-12)
    assert scores[1] == pytest.approx(math.sqrt(3 / 4 * 2 / 3), abs=1e-12)


def test_bleu_classic_papineni_example_and_zero_matches():
    # Papineni et al.: "the" x7 against refs holding "the" at most twice:
    # p1 = 2/7; hyp length 7, refs 6 and 7 -> closest 7, BP = 1.
    # No bigram "the the" in any reference -> BLEU-2..4 are exactly 0.
    refs = [["the cat is on the mat".split(), "there is a cat on the mat".split()]]
    scores = metrics.bleu(refs, [["the"] * 7])
    assert scores[0] == pytest.approx(2 / 7, abs=1e-12)
    assert scores[1:] == [0.0, 0.0, 0.0]
    assert metrics.bleu(refs, [["dogs", "bark"]]) == [0.0, 0.0, 0.0, 0.0]


def test_bleu_corpus_sums_and_ties_go_to_the_shorter_reference():
    # Image 1: hyp "a dog runs" (3 words); refs of 6 and 4 words -> r = 4.
    #   matches/totals: 1-grams 3/3, 2-grams 2/2, 3-grams 1/1, 4-grams 0/0.
    # Image 2: hyp "two cats are sleeping together" (5); refs of 4 and 6 words:
    #   a tie at distance 1 -> the SHORTER, r = 4.
    #   1-grams 4/5 (not "together"), 2-grams 3/4 ("two cats", "cats are",
    #   "are sleeping"), 3-grams 2/3, 4-grams 1/2 ("two cats are sleeping").
    # Corpus: p1 = 7/8, p2 = 5/6, p3 = 3/4, p4 = 1/2; c = 8, r = 4 + 4 = 8,
    # BP = exp(1 - 8/8) = 1 (with ties -> longer r would be 10 and BP < 1).
    refs = [["a dog runs on the grass", "a dog is running"],
            ["two cats are sleeping", "two small cats are sleeping inside"]]
    hyps = ["a dog runs", "two cats are sleeping together"]
    precisions = [7 / 8, 5 / 6, 3 / 4, 1 / 2]
    expected = [numpy.prod(precisions[:n]) ** (1 / n) for n in range(1, 5)]
    numpy.testing.assert_allclose(metrics.bleu(refs, hyps), expected, rtol=0, atol=1e-12)


def test_bleu_brevity_penalty_and_short_hypothesis_counting():
    # hyp "a dog runs" (c = 3) against refs of 6 and 4 words -> r = 4,
    # BP = exp(1 - 4/3). p1 = p2 = p3 = 1. The hypothesis has 0 four-grams, so
    # (coco-caption counting) the corpus has 0 matches of order 4 -> BLEU-4 = 0.
    refs = [["a dog runs on the grass", "a dog is running"]]
    scores = metrics.bleu(refs, ["a dog runs"])
    bp = math.exp(1 - 4 / 3)
    numpy.testing.assert_allclose(scores, [bp, bp, bp, 0.0], rtol=0, atol=1e-12)


def test_bleu_empty_hypothesis_and_bad_input():
    refs = [["a dog runs"], ["a cat sleeps"]]
    # Image 2's empty hypothesis adds nothing to matches or totals but its
    # closest reference (3 words) still counts: c = 3, r = 6, BP = exp(1 - 2).
    scores = metrics.bleu(refs, ["a dog runs", "<END>"])
    assert scores[0] == pytest.approx(math.exp(-1.0), abs=1e-12)
    assert metrics.bleu(refs, ["", ""]) == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="2 reference sets but 1 hypotheses"):
        metrics.bleu(refs, ["a dog"])
    with pytest.raises(ValueError, match="non-empty list"):
        metrics.bleu([[]], ["a dog"])
    with pytest.raises(TypeError, match="word ids"):
        metrics.bleu([[["a", "dog"]]], [[3, 4]])


@pytest.mark.filterwarnings("ignore::UserWarning")   # nltk warns on zero 4-gram matches
def test_bleu_equals_nltk_corpus_bleu_on_random_corpora():
    bleu_score = pytest.importorskip("nltk.translate.bleu_score")
    rng = random.Random(0)
    words = ["a", "dog", "cat", "runs", "on", "the", "grass", "red", "ball"]
    for _ in range(3):
        refs, hyps = [], []
        for _ in range(30):
            refs.append([[rng.choice(words) for _ in range(rng.randint(3, 12))]
                         for _ in range(rng.randint(1, 5))])
            # >= 4 words: nltk's max(1, .) n-gram totals then agree with ours.
            hyps.append([rng.choice(words) for _ in range(rng.randint(4, 12))])
        ours = metrics.bleu(refs, hyps)
        for n in range(1, 5):
            theirs = bleu_score.corpus_bleu(refs, hyps, weights=(1.0 / n,) * n)
            assert ours[n - 1] == pytest.approx(theirs, abs=1e-12)


# ----------------------------------------------------------------- CIDEr-D

def test_cider_d_hand_computed_two_images():
    # N = 2 images, ref_len = log 2, every reference n-gram has df = 1 so its
    # weight is w = log 2 per occurrence; unseen n-grams have df 0 -> also w.
    # Image 1: hyp = ref = "a b". Orders 1 and 2 have cosine 1, orders 3-4 have
    #   zero norms -> 0. Score = 10 * (1 + 1 + 0 + 0) / 4 = 5.
    # Image 2: hyp "c e", ref "c d". Unigrams: dot = min(w, w) * w (for "c")
    #   + min(w, 0) * 0 (for "e") = w^2; norms sqrt(2) w each -> 1/2.
    #   Bigram "c e" vs "c d": 0. Score = 10 * (1/2) / 4 = 1.25.
    per_image = metrics.cider_d_per_image([["a b"], ["c d"]], ["a b", "c e"])
    numpy.testing.assert_allclose(per_image, [5.0, 1.25], rtol=0, atol=1e-12)
    assert metrics.cider_d([["a b"], ["c d"]], ["a b", "c e"]) == pytest.approx(3.125, abs=1e-12)


def test_cider_d_clipping_and_length_penalty():
    # No n-gram is shared between the two images, so every df is 1 and each
    # occurrence weighs w = log 2.
    # Image 1: hyp "a a a", ref "a b". Unigrams: hyp a = 3w; ref a = w, b = w.
    #   Clipped dot = min(3w, w) * w = w^2; norms 3w and sqrt(2) w ->
    #   1 / (3 sqrt 2) (unclipped it would be 1/sqrt 2). Bigrams "a a" vs "a b": 0.
    #   Lengths in bigrams: 2 vs 1 -> penalty exp(-1 / 72).
    # Image 2: hyp "p q r", ref "p q r s".
    #   unigrams: dot 3 w^2, norms sqrt(3) w and 2w -> sqrt(3) / 2;
    #   bigrams: dot 2 w^2, norms sqrt(2) w and sqrt(3) w -> sqrt(2/3);
    #   trigrams: dot w^2, norms w and sqrt(2) w -> 1 / sqrt 2; 4-grams: 0.
    #   Bigram lengths 2 vs 3 -> penalty exp(-1/72).
    penalty = math.exp(-1.0 / 72.0)
    expected_1 = 10 * (1 / (3 * math.sqrt(2))) / 4 * penalty
    expected_2 = 10 * (math.sqrt(3) / 2 + math.sqrt(2 / 3) + 1 / math.sqrt(2)) / 4 * penalty
    per_image = metrics.cider_d_per_image([["a b"], ["p q r s"]], ["a a a", "p q r"])
    numpy.testing.assert_allclose(per_image, [expected_1, expected_2], rtol=0, atol=1e-12)


def test_cider_d_ngrams_in_every_image_weigh_nothing():
    # "a" occurs in the references of both images: idf = log 2 - log 2 = 0.
    # Hyp "a" then has a zero vector -> 0. Hyp "a b" for image 1: unigram
    # "b" (weight w) against ref "a b" (a = 0, b = w) -> cosine 1; bigram
    # "a b" (df 1) -> 1; equal lengths -> 10 * 2 / 4 = 5.
    per_image = metrics.cider_d_per_image([["a b"], ["a c"]], ["a b", "a"])
    numpy.testing.assert_allclose(per_image, [5.0, 0.0], rtol=0, atol=1e-12)


def test_cider_d_averages_over_references():
    # Image 1 has two refs: "x y" (identical to the hyp: 5 as above) and
    # "z" (no shared n-gram: 0; bigram lengths 1 vs 0 only scale that 0).
    # Mean over refs: 2.5. Image 2: hyp "q" vs ref "r": 0.
    per_image = metrics.cider_d_per_image([["x y", "z"], ["r"]], ["x y", "q"])
    numpy.testing.assert_allclose(per_image, [2.5, 0.0], rtol=0, atol=1e-12)


def test_cider_d_properties_on_a_bigger_corpus():
    rng = random.Random(1)
    words = [f"w{i}" for i in range(40)]
    refs = [[" ".join(rng.choice(words) for _ in range(8)) for _ in range(5)] for _ in range(20)]
    # Every reference of image 0 replaced by one caption -> that caption scores
    # the maximum (cosine 1 for each order, no length penalty): 10.
    refs[0] = ["w1 w2 w3 w4 w5 w6 w7 w8"] * 5
    scores = metrics.cider_d_per_image(refs, [refs[0][0]] + ["zzz yyy"] * 19)
    assert scores[0] == pytest.approx(10.0, abs=1e-9)
    numpy.testing.assert_array_equal(scores[1:], 0.0)   # unrelated words -> 0
    # A caption made of an image's own reference beats a caption borrowed
    # from another image's references.
    own = metrics.cider_d_per_image(refs, [r[0] for r in refs])
    borrowed = metrics.cider_d_per_image(refs, [refs[(i + 1) % 20][0] for i in range(20)])
    assert numpy.all(own > borrowed)


def test_cider_d_single_image_is_zero_and_bad_input():
    # log(N) = log(1) = 0: every IDF weight vanishes.
    assert metrics.cider_d([["a dog runs"]], ["a dog runs"]) == 0.0
    with pytest.raises(ValueError, match="sigma"):
        metrics.cider_d([["a"], ["b"]], ["a", "b"], sigma=0)
    with pytest.raises(ValueError, match="empty corpus"):
        metrics.cider_d([], [])


# ROUGE-L values computed by pycocoevalcap 1.2's rouge.Rouge().calc_score on the same captions.
ROUGE_CASES = [
    ("a dog runs on the grass", ["a dog is running on the grass", "the dog runs"], 0.7587064676616916),
    ("a man in a red shirt climbs a rock",
     ["a man climbs a rock", "a person in red is climbing", "man on rock wall"], 0.7530864197530864),
    ("two children play in the snow", ["a girl and a boy are playing in snow", "two kids in the snow"],
     0.7393939393939394),
    ("a cat", ["a dog runs"], 0.3860759493670886),
    ("a b c d e f", ["f e d c b a"], 0.16666666666666666),
]


def test_rouge_l_matches_coco_caption_on_hand_cases():
    from captioning.metrics import rouge_l, rouge_l_per_image
    references = [refs for _, refs, _ in ROUGE_CASES]
    hypotheses = [hyp for hyp, _, _ in ROUGE_CASES]
    expected = [value for _, _, value in ROUGE_CASES]
    numpy.testing.assert_allclose(rouge_l_per_image(references, hypotheses), expected, rtol=1e-12)
    assert rouge_l(references, hypotheses) == pytest.approx(numpy.mean(expected), rel=1e-12)


def test_rouge_l_edge_cases():
    from captioning.metrics import longest_common_subsequence, rouge_l_per_image
    assert longest_common_subsequence(list("abcbdab"), list("bdcaba")) == 4
    assert longest_common_subsequence([], ["a"]) == 0
    assert rouge_l_per_image([["a dog"], ["a dog"]], ["", "the cat"]).tolist() == [0.0, 0.0]
    assert rouge_l_per_image([["A dog."]], ["a dog"]).tolist() == [1.0]
