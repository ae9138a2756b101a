"""Retrieval metrics (Recall@K, median rank) on a hand-computed case, the chunked score
matrix against nn.ranking's score, the epoch batches, and the shapes word-region check."""
import numpy
import pytest

from captioning.alignment.data import Sentences, epoch_batches
from captioning.alignment.regions import _cell_on_box
from captioning.alignment.model import AlignmentModel
from captioning.alignment.retrieval import (distinct_sentences, encode_images, encode_words, ranks, recall_metrics,
                                          score_matrix, sentence_scores)
from nn import ranking
from nn.gradcheck import rel_error
from tests.conftest import as_xp

# 2 images with 2 sentences each: sentences 0, 1 describe image 0, sentences 2, 3 image 1.
S = numpy.array([[3.0, 1.0, 2.0, 0.5],
                 [2.5, 3.0, 1.0, 2.0]])
OWNER = numpy.array([0, 0, 1, 1])


def test_ranks_by_hand():
    annotation, search = ranks(S, OWNER)
    # image 0: its sentence 0 (3.0) beats every other -> 1; image 1: its best sentence (2.0)
    # is beaten by the wrong 2.5 and 3.0 -> 3.
    assert annotation.tolist() == [1, 3]
    # sentence 0: column (3, 2.5), own image 0 first; sentence 1: (1, 3) -> 2;
    # sentence 2: (2, 1) -> 2; sentence 3: (0.5, 2) -> 1.
    assert search.tolist() == [1, 2, 2, 1]


def test_recall_and_median_rank_by_hand():
    m = recall_metrics(S, OWNER, ks=(1, 2))
    assert m["annotation"] == {"R@1": 50.0, "R@2": 50.0, "median_rank": 2.0}
    assert m["search"] == {"R@1": 50.0, "R@2": 100.0, "median_rank": 1.5}


def test_ties_do_not_count_against_the_query():
    # Two images with identical captions (the shapes set has such): both rank 1.
    annotation, search = ranks(numpy.array([[1.0, 1.0], [1.0, 1.0]]), numpy.array([0, 1]))
    assert annotation.tolist() == [1, 1] and search.tolist() == [1, 1]


def test_ties_count_against_neither_direction_by_hand():
    # 3 images, 5 sentences; sentences 0 (image 0) and 2 (image 1) are the same words, so
    # their columns are equal. Every tie with a wrong item is resolved for the query.
    S = numpy.array([[2.0, 1.0, 2.0, 3.0, 0.0],
                     [1.5, 0.5, 1.5, 1.0, 1.5],
                     [0.0, 2.0, 0.0, 1.0, 2.0]])
    owner = numpy.array([0, 0, 1, 2, 2])
    annotation, search = ranks(S, owner)
    # image 0: own 2.0 (sentence 0) ties the wrong 2.0 (sentence 2), only the wrong 3.0 is
    # higher -> 2; image 1: own 1.5 ties the wrong 1.5 twice -> 1; image 2: own 2.0 ties
    # the wrong 2.0 of sentence 1 -> 1.
    assert annotation.tolist() == [2, 1, 1]
    # sentence 2: column (2.0, 1.5, 0.0), own image 1 below image 0 -> 2; sentence 3:
    # (3.0, 1.0, 1.0), own image 2 ties image 1 and is below image 0 -> 2.
    assert search.tolist() == [1, 2, 2, 2, 1]
    m = recall_metrics(S, owner, ks=(1,))
    assert m["annotation"]["R@1"] == pytest.approx(200 / 3) and m["search"]["R@1"] == 40.0


def test_distinct_sentences_by_hand():
    words = numpy.array([[1, 2, 0], [3, 0, 0], [1, 2, 0], [1, 2, 4], [3, 0, 0]])
    sentences = Sentences(words, numpy.array([2, 1, 2, 3, 1]), numpy.array([0, 0, 1, 1, 2]))
    distinct, index = distinct_sentences(sentences)
    assert distinct.words.tolist() == [[1, 2, 0], [3, 0, 0], [1, 2, 4]]    # in order of first use
    assert distinct.lengths.tolist() == [2, 1, 3] and distinct.image.tolist() == [0, 0, 1]
    assert index.tolist() == [0, 1, 0, 2, 1]


def test_identical_sentences_of_different_images_tie_exactly():
    # float32, the default precision: scored apart, identical sentences differ in the last
    # bits (here by up to 1e-6) and would rank arbitrarily against each other.
    model = AlignmentModel({"feature_dim": 5, "vocab_size": 9, "embed_dim": 4, "hidden_dim": 32,
                            "cosine": 10.0, "average": True}, seed=0, dtype=numpy.float32)
    gen = numpy.random.default_rng(0)
    rows = gen.integers(1, 9, size=(6, 7))
    lengths = numpy.array([7, 3, 5, 2, 6, 4])
    pick = gen.integers(0, 6, size=40)                  # 40 sentences, many of them repeated
    words = rows[pick] * (numpy.arange(7)[None] < lengths[pick, None])
    sentences = Sentences(words, lengths[pick], numpy.arange(40) % 8)
    regions = model.regions_forward(numpy.asarray(gen.standard_normal((8, 4, 5)), dtype=numpy.float32))[0]
    S = sentence_scores(model, regions, sentences, chunk=3)
    for p in range(40):
        assert (S[:, pick == pick[p]] == S[:, [p]]).all()
    flat, offsets = encode_words(model, sentences, batch_size=7)
    assert rel_error(S, score_matrix(regions, flat, offsets, **model.score_options())) < 1e-5


@pytest.mark.parametrize("clip, average", [(False, False), (True, False), (False, True), (True, True)])
def test_score_matrix_equals_the_training_score(xp, clip, average):
    gen = numpy.random.default_rng(0)
    regions = as_xp(xp, gen.standard_normal((5, 3, 4)))
    lengths = numpy.array([2, 4, 1])
    s = gen.standard_normal((3, 4, 4))
    mask = (numpy.arange(4)[None] < lengths[:, None]).astype(float)
    expected, _ = ranking.fragment_score_forward(regions, as_xp(xp, s), as_xp(xp, mask), clip=clip, average=average)
    flat = as_xp(xp, numpy.concatenate([s[m, :n] for m, n in enumerate(lengths)]))
    offsets = numpy.concatenate([[0], numpy.cumsum(lengths)])
    assert rel_error(score_matrix(regions, flat, offsets, chunk=2, clip=clip, average=average), expected) < 1e-12


def test_retrieval_scores_of_a_model_with_the_global_term_equal_the_training_score(monkeypatch):
    from captioning.encoders import FrozenFeatures
    model = AlignmentModel({"feature_dim": 5, "vocab_size": 9, "embed_dim": 4, "hidden_dim": 6, "cosine": 3.0,
                            "global_weight": 2.0}, seed=0, dtype=numpy.float64)
    gen = numpy.random.default_rng(1)
    grid = gen.standard_normal((4, 3, 5))
    lengths = numpy.array([3, 1, 2, 3, 2, 1])
    words = gen.integers(1, 9, size=(6, 3)) * (numpy.arange(3)[None] < lengths[:, None])
    sentences = Sentences(words, lengths, numpy.array([0, 0, 1, 2, 3, 3]))
    mask = (numpy.arange(3)[None] < lengths[:, None]).astype(float)
    # The S that the loss ranks, caught on its way to the ranking loss (sentences 0, 2, 3, 4 are
    # the true pairs of images 0-3).
    import captioning.alignment.model as model_module
    seen = {}

    def catch(S, *args, **kwargs):
        seen["S"] = S
        return ranking.max_margin_ranking_forward(S, *args, **kwargs)
    pairs = numpy.array([0, 2, 3, 4])
    monkeypatch.setattr(model_module, "max_margin_ranking_forward", catch)
    model.loss(grid, words[pairs], mask[pairs])
    fragments = ranking.fragment_score_forward(model.regions_forward(grid)[0],
                                               model.words_forward(words, mask)[0], mask)[0]
    regions, whole = encode_images(model, FrozenFeatures({"feature_dim": 5}), grid, batch_size=3)
    expected = sentence_scores(model, regions, sentences, chunk=3, image_vectors=whole)
    assert rel_error(seen["S"], expected[:, pairs]) < 1e-12
    assert rel_error(expected, fragments) > 1e-3                    # the global term is in it
    with pytest.raises(ValueError, match="image vectors"):
        sentence_scores(model, regions, sentences)


def test_epoch_batches_use_every_caption_once_with_distinct_images():
    owner = numpy.repeat(numpy.arange(7), 3)
    sentences = Sentences(numpy.ones((21, 2), dtype=numpy.int64), numpy.full(21, 2), owner)
    batches = epoch_batches(sentences, 7, 4, seed=0, epoch=0)
    assert sorted(numpy.concatenate(batches).tolist()) == list(range(21))
    assert all(len(set(owner[b].tolist())) == len(b) for b in batches)
    again = epoch_batches(sentences, 7, 4, seed=0, epoch=0)
    assert all((a == b).all() for a, b in zip(batches, again))


@pytest.mark.parametrize("cell, on", [(0, True), (1, True), (2, False), (8, True), (9, True), (16, False)])
def test_cell_on_box(cell, on):
    # 8 x 8 grid on a 64-pixel image: 8-pixel cells; the box spans pixels 3..12 both ways.
    assert _cell_on_box(cell, 8, 64, (3, 3, 12, 12)) is on
