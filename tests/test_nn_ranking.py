"""Fragment scores and the max-margin ranking loss (nn.ranking): values by brute force,
float64 gradient checks, bad input."""
import numpy
import pytest

from nn import ranking
from nn.gradcheck import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from tests.conftest import as_xp


def make_inputs(xp, seed, N=3, R=4, M=2, T=5, H=6):
    gen = numpy.random.default_rng(seed)
    v = as_xp(xp, gen.standard_normal((N, R, H)))
    s = as_xp(xp, gen.standard_normal((M, T, H)))
    mask = as_xp(xp, (numpy.arange(T)[None] < numpy.array([T, 3])[:M, None]).astype(float))
    return gen, v, s, mask


def brute_force_scores(v, s, mask, clip=False, average=False):
    v, s, mask = (numpy.asarray(a.get() if hasattr(a, "get") else a) for a in (v, s, mask))
    S = numpy.zeros((v.shape[0], s.shape[0]))
    for k in range(v.shape[0]):
        for l in range(s.shape[0]):
            best = [max(float(v[k, i] @ s[l, t]) for i in range(v.shape[1]))
                    for t in range(s.shape[1]) if mask[l, t]]
            best = [max(b, 0.0) for b in best] if clip else best
            S[k, l] = sum(best) / (len(best) if average else 1)
    return S


def brute_force_loss(S, margin):
    S = numpy.asarray(S.get() if hasattr(S, "get") else S)
    N, total = S.shape[0], 0.0
    for k in range(N):
        for l in range(N):
            if l != k:
                total += max(0.0, S[k, l] - S[k, k] + margin) + max(0.0, S[l, k] - S[k, k] + margin)
    return total / N


def test_scores_equal_brute_force(xp):
    _, v, s, mask = make_inputs(xp, 0)
    S, _ = ranking.fragment_score_forward(v, s, mask)
    assert rel_error(S, brute_force_scores(v, s, mask)) < 1e-12


@pytest.mark.parametrize("clip, average", [(True, False), (False, True), (True, True)])
def test_score_options_equal_brute_force_and_their_gradients(xp, clip, average):
    gen, v, s, mask = make_inputs(xp, 5, R=1)     # one region: some best matches are < 0
    S, cache = ranking.fragment_score_forward(v, s, mask, clip=clip, average=average)
    assert rel_error(S, brute_force_scores(v, s, mask, clip, average)) < 1e-12
    if clip:
        assert rel_error(S, brute_force_scores(v, s, mask, False, average)) > 1e-3
    dS = as_xp(xp, gen.standard_normal(S.shape))
    dv, ds = ranking.fragment_score_backward(dS, cache)

    def f(_):
        return ranking.fragment_score_forward(v, s, mask, clip=clip, average=average)[0]
    assert rel_error(dv, eval_numerical_gradient_array(f, v, dS)) < 1e-7
    assert rel_error(ds, eval_numerical_gradient_array(f, s, dS)) < 1e-7


def test_l2_normalize_gives_unit_vectors_and_its_gradient(xp):
    gen = numpy.random.default_rng(6)
    x = as_xp(xp, gen.standard_normal((3, 4, 5)))
    y, cache = ranking.l2_normalize_forward(x)
    assert float(abs((y * y).sum(axis=-1) - 1).max()) < 1e-10
    dy = as_xp(xp, gen.standard_normal(y.shape))
    dx = ranking.l2_normalize_backward(dy, cache)
    numeric = eval_numerical_gradient_array(lambda _: ranking.l2_normalize_forward(x)[0], x, dy)
    assert rel_error(dx, numeric) < 1e-7


def test_padding_words_do_not_count(xp):
    _, v, s, mask = make_inputs(xp, 1)
    S, _ = ranking.fragment_score_forward(v, s, mask)
    s2 = s.copy()
    s2[1, 3:] = 100.0                       # sentence 1 has 3 real words
    S2, _ = ranking.fragment_score_forward(v, s2, mask)
    assert rel_error(S, S2) < 1e-15


def test_score_gradients(xp):
    gen, v, s, mask = make_inputs(xp, 2)
    S, cache = ranking.fragment_score_forward(v, s, mask)
    dS = as_xp(xp, gen.standard_normal(S.shape))
    dv, ds = ranking.fragment_score_backward(dS, cache)
    num_v = eval_numerical_gradient_array(lambda _: ranking.fragment_score_forward(v, s, mask)[0], v, dS)
    num_s = eval_numerical_gradient_array(lambda _: ranking.fragment_score_forward(v, s, mask)[0], s, dS)
    assert rel_error(dv, num_v) < 1e-7
    assert rel_error(ds, num_s) < 1e-7


@pytest.mark.parametrize("margin", [1.0, 0.3])
def test_ranking_loss_equals_brute_force_and_its_gradient(xp, margin):
    gen = numpy.random.default_rng(3)
    S = as_xp(xp, gen.standard_normal((4, 4)))
    loss, cache = ranking.max_margin_ranking_forward(S, margin)
    assert abs(loss - brute_force_loss(S, margin)) < 1e-12
    dS = ranking.max_margin_ranking_backward(cache)
    numeric = eval_numerical_gradient(lambda: ranking.max_margin_ranking_forward(S, margin)[0], S)
    assert rel_error(dS, numeric) < 1e-7


def test_ignored_pairs_add_no_loss_and_no_gradient(xp):
    gen = numpy.random.default_rng(7)
    S = as_xp(xp, gen.standard_normal((4, 4)))
    ignore = numpy.zeros((4, 4), dtype=bool)
    ignore[0, 2] = ignore[2, 0] = True            # sentences 0 and 2 are the same words
    loss, cache = ranking.max_margin_ranking_forward(S, 1.0, ignore=as_xp(xp, ignore))
    S_np = numpy.asarray(S.get() if hasattr(S, "get") else S)
    expected = sum(max(0.0, S_np[k, l] - S_np[k, k] + 1) + max(0.0, S_np[l, k] - S_np[k, k] + 1)
                   for k in range(4) for l in range(4) if l != k and not ignore[k, l]) / 4
    assert abs(loss - expected) < 1e-12
    dS = ranking.max_margin_ranking_backward(cache)
    numeric = eval_numerical_gradient(lambda: ranking.max_margin_ranking_forward(S, 1.0, ignore=ignore)[0], S)
    assert rel_error(dS, numeric) < 1e-7
    assert float(dS[0, 2]) == 0.0 and float(dS[2, 0]) == 0.0


def brute_force_hardest_loss(S, margin, ignore=None):
    """VSE++'s max of hinges by loops: each true pair pays for its worst wrong pair per direction."""
    S = numpy.asarray(S.get() if hasattr(S, "get") else S)
    N, total = S.shape[0], 0.0
    wrong = [(k, l) for k in range(N) for l in range(N) if l != k and not (ignore is not None and ignore[k, l])]
    for k in range(N):
        total += max([max(0.0, S[k, l] - S[k, k] + margin) for (kk, l) in wrong if kk == k], default=0.0)
        total += max([max(0.0, S[l, k] - S[k, k] + margin) for (l, kk) in wrong if kk == k], default=0.0)
    return total / N


@pytest.mark.parametrize("margin", [1.0, 0.3])
@pytest.mark.parametrize("with_ignore", [False, True])
def test_hardest_negative_loss_equals_brute_force_and_its_gradient(xp, margin, with_ignore):
    gen = numpy.random.default_rng(11)
    S = as_xp(xp, gen.standard_normal((5, 5)))
    ignore = numpy.zeros((5, 5), dtype=bool)
    if with_ignore:
        ignore[0, 3] = ignore[3, 0] = True
        ignore[1, :] = ignore[:, 1] = True        # image/sentence 1 has no wrong pair at all
        ignore[1, 1] = False
    loss, cache = ranking.max_margin_ranking_forward(S, margin, ignore=as_xp(xp, ignore), hardest=True)
    assert abs(loss - brute_force_hardest_loss(S, margin, ignore)) < 1e-12
    assert loss <= ranking.max_margin_ranking_forward(S, margin, ignore=as_xp(xp, ignore))[0]
    dS = ranking.max_margin_ranking_backward(cache)
    numeric = eval_numerical_gradient(
        lambda: ranking.max_margin_ranking_forward(S, margin, ignore=ignore, hardest=True)[0], S)
    assert rel_error(dS, numeric) < 1e-7
    if with_ignore:
        assert float(dS[0, 3]) == 0.0 and float(abs(dS[1]).sum()) == 0.0


def test_hardest_negative_loss_by_hand(xp):
    # Image 0's wrong sentences score 2.5 and 2.8 against its true 3.0: the sum of hinges
    # would pay 0.5 + 0.8 in row 0, the hardest pays only for sentence 2.
    S = as_xp(xp, [[3.0, 2.5, 2.8], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]])
    loss, cache = ranking.max_margin_ranking_forward(S, 1.0, hardest=True)
    # row 0: max(0.5, 0.8) = 0.8; column 1: 2.5 - 3 + 1 = 0.5; column 2: 2.8 - 3 + 1 = 0.8
    assert abs(loss - (0.8 + 0.5 + 0.8) / 3) < 1e-15
    dS = ranking.max_margin_ranking_backward(cache)
    assert float(dS[0, 1]) == pytest.approx(1 / 3) and float(dS[0, 2]) == pytest.approx(2 / 3)
    assert float(dS[0, 0]) == pytest.approx(-1 / 3) and float(dS[1, 1]) == pytest.approx(-1 / 3)


def test_ranking_loss_by_hand(xp):
    # True pairs beat every wrong one by more than the margin: no loss, no gradient.
    S = as_xp(xp, [[3.0, 1.0], [0.5, 2.5]])
    loss, cache = ranking.max_margin_ranking_forward(S, 1.0)
    assert loss == 0.0 and float(abs(ranking.max_margin_ranking_backward(cache)).sum()) == 0.0
    # One violation in each direction: S01 - S00 + 1 = 0.5 (row 0), S01 - S11 + 1 = 0.5 (column 1).
    S = as_xp(xp, [[3.0, 2.5], [0.0, 3.0]])
    loss, _ = ranking.max_margin_ranking_forward(S, 1.0)
    assert abs(loss - (0.5 + 0.5) / 2) < 1e-15


def test_bad_input(xp):
    _, v, s, mask = make_inputs(xp, 4)
    with pytest.raises(ValueError, match="mask"):
        ranking.fragment_score_forward(v, s, mask[:, :2])
    with pytest.raises(ValueError, match="shape"):
        ranking.max_margin_ranking_forward(as_xp(xp, numpy.zeros((2, 3))))
