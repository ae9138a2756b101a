"""The alignment model: float64 gradient check of the whole loss (every parameter and the
image features), and training lowers the loss on a tiny batch."""
import numpy
import pytest

from captioning.alignment.model import AlignmentModel
from nn import backend
from nn.gradcheck import eval_numerical_gradient, rel_error
from nn.optim import Adam
from tests.conftest import as_xp


def tiny(xp, seed=0, N=3, L=4, D=5, T=4, V=7):
    backend.set_default_float(numpy.float64)
    model = AlignmentModel({"feature_dim": D, "vocab_size": V, "embed_dim": 3, "hidden_dim": 6}, seed=seed,
                           dtype=numpy.float64)
    gen = numpy.random.default_rng(seed)
    for name, p in model.params.items():       # nonzero biases: ReLUs both on and off
        if name.startswith("b_"):
            p[...] = as_xp(xp, gen.standard_normal(p.shape) * 0.3)
    grid = as_xp(xp, gen.standard_normal((N, L, D)))
    words = xp.asarray(gen.integers(1, V, size=(N, T)))
    mask = as_xp(xp, (numpy.arange(T)[None] < numpy.array([4, 2, 3])[:, None]).astype(float))
    return model, grid, words, mask


def _check_whole_model_gradients(model, grid, words, mask):
    """Every parameter's and the region features' gradient against finite differences (float64)."""
    loss, dgrid = model.loss(grid, words, mask)
    assert loss > 0
    analytic = {name: g.copy() for name, g in model.grads.items()}
    for name, param in model.params.items():
        numeric = eval_numerical_gradient(lambda: model.loss(grid, words, mask)[0], param)
        assert rel_error(analytic[name], numeric) < 1e-6, name
    numeric = eval_numerical_gradient(lambda: model.loss(grid, words, mask)[0], grid)
    assert rel_error(dgrid, numeric) < 1e-6


def test_whole_model_gradients(xp):
    model, grid, words, mask = tiny(xp, seed=1)
    _check_whole_model_gradients(model, grid, words, mask)


def test_whole_model_gradients_with_the_score_options(xp):
    model, grid, words, mask = tiny(xp, seed=6)     # a seed with no ReLU/max/hinge kink within 1e-5
    model.config.update(cosine=4.0, clip=True, average=True, word_dropout=0.3, dropout=0.2)
    model.train()
    model.dropout_seed = 3
    _check_whole_model_gradients(model, grid, words, mask)
    v = model.regions_forward(grid)[0]
    assert float(abs((v * v).sum(axis=-1) - 4.0).max()) < 1e-6      # |v|^2 = the cosine scale


def test_whole_model_gradients_with_hardest_negatives(xp):
    model, grid, words, mask = tiny(xp, seed=1)
    summed = model.loss(grid, words, mask)[0]
    model.config["hardest"] = True
    _check_whole_model_gradients(model, grid, words, mask)
    assert model.loss(grid, words, mask)[0] < summed     # one hinge of two wrong pairs per direction
    model.warming_up = True                              # the trainer's warm-up epochs: the sum
    assert model.loss(grid, words, mask)[0] == summed


def test_identical_captions_of_other_images_are_not_wrong_pairs(xp):
    # Three images with the same caption: no image-sentence pair is wrong, so no loss.
    model, grid, _, _ = tiny(xp, seed=7)
    words = xp.asarray(numpy.array([[1, 2, 3]] * 3))
    mask = as_xp(xp, numpy.ones((3, 3)))
    loss, _ = model.loss(grid, words, mask)
    assert loss == 0.0
    words = xp.asarray(numpy.array([[1, 2, 3], [1, 2, 3], [4, 2, 3]]))
    assert model.loss(grid, words, mask)[0] > 0


def test_training_drives_the_loss_to_zero(xp):
    model, grid, words, mask = tiny(xp, seed=2)
    optimizer = Adam(list(model.named_parameters()), lr=1e-2)
    first = model.loss(grid, words, mask)[0]
    for _ in range(200):
        loss, _ = model.loss(grid, words, mask)
        optimizer.step()
    assert first > 1 and loss < 1e-3


def test_frozen_features_skip_the_grid_gradient_but_not_the_weights(xp):
    model, grid, words, mask = tiny(xp, seed=3)
    loss, dgrid = model.loss(grid, words, mask)
    grads = {name: g.copy() for name, g in model.grads.items()}
    loss2, none = model.loss(grid, words, mask, need_dgrid=False)
    assert none is None and loss2 == loss
    for name, g in model.grads.items():
        assert rel_error(g, grads[name]) < 1e-15, name


def test_checkpoint_round_trip_in_float16(tmp_path):
    from captioning.alignment.checkpoint import load_aligner, save_aligner
    from captioning.data.text import Vocabulary
    from captioning.encoders import FrozenFeatures
    vocabulary = Vocabulary(["dog", "cat", "runs"])
    model = AlignmentModel({"feature_dim": 5, "vocab_size": len(vocabulary), "embed_dim": 3, "hidden_dim": 4},
                           dtype=numpy.float32)
    encoder = FrozenFeatures({"name": "efficientnet_lite0"})
    path = save_aligner(tmp_path / "a.npz", model, encoder, vocabulary, {"name": "flickr8k"},
                        dtype=numpy.float16)
    ckpt = load_aligner(path)
    assert ckpt.vocabulary == vocabulary and ckpt.model.config == model.config
    for name, p in model.params.items():
        assert numpy.allclose(ckpt.model.params[name], p, rtol=1e-3, atol=1e-4), name


def test_gradients_with_dropout(xp):
    model, grid, words, mask = tiny(xp, seed=4)
    model.config["dropout"] = 0.3
    model.train()
    model.dropout_seed = 7                      # the same masks on every call
    loss, dgrid = model.loss(grid, words, mask)
    analytic = {name: g.copy() for name, g in model.grads.items()}
    for name in ("W_m", "W_w", "W_e"):
        numeric = eval_numerical_gradient(lambda: model.loss(grid, words, mask)[0], model.params[name])
        assert rel_error(analytic[name], numeric) < 1e-6, name
    numeric = eval_numerical_gradient(lambda: model.loss(grid, words, mask)[0], grid)
    assert rel_error(dgrid, numeric) < 1e-6
    model.eval()                                # no dropout: another loss
    assert model.loss(grid, words, mask)[0] != loss


def test_whole_model_gradients_with_the_global_term(xp):
    model, grid, words, mask = tiny(xp, seed=1)
    fragments_only = model.loss(grid, words, mask)[0]
    model = AlignmentModel({**model.config, "global_weight": 0.7, "cosine": 3.0}, seed=1, dtype=numpy.float64)
    assert {"W_u", "b_u", "W_q", "b_q"} <= set(model.params)
    gen = numpy.random.default_rng(1)
    for name, p in model.params.items():
        if name.startswith("b_"):
            p[...] = as_xp(xp, gen.standard_normal(p.shape) * 0.3)
    _check_whole_model_gradients(model, grid, words, mask)
    with_global = model.loss(grid, words, mask)[0]
    for name in ("W_u", "b_u", "W_q", "b_q"):
        assert float(abs(model.grads[name]).max()) > 1e-3, name
    model.config["global_weight"] = 0.0                 # the same weights without the term
    assert abs(model.loss(grid, words, mask)[0] - with_global) > 1e-3
    assert float(abs(model.grads["W_u"]).max()) == 0.0
    assert fragments_only > 0


def test_the_global_term_adds_image_and_sentence_vectors_to_the_score(xp):
    model, grid, words, mask = tiny(xp, seed=2)
    model = AlignmentModel({**model.config, "global_weight": 0.5}, seed=2, dtype=numpy.float64)
    s, q, _ = model.sentences_forward(words, mask)
    u, _ = model.image_vector_forward(grid)
    p = {k: backend.to_numpy(v) for k, v in model.params.items()}
    # By hand: the sentence vector reads the left-to-right state at the last real word
    # and the right-to-left state at the first word.
    from nn.bidirectional import birnn_relu_forward
    e = numpy.maximum(0, p["W_w"][backend.to_numpy(words)] @ p["W_e"] + p["b_e"])
    hf, hb, _ = birnn_relu_forward(e, backend.to_numpy(mask), p["W_f"], p["b_f"], p["W_b"], p["b_b"])
    last = backend.to_numpy(mask).sum(axis=1).astype(int) - 1
    by_hand = (hf[numpy.arange(3), last] + hb[:, 0]) @ p["W_q"] + p["b_q"]
    assert rel_error(backend.to_numpy(q), by_hand) < 1e-12
    assert rel_error(backend.to_numpy(u), backend.to_numpy(grid).mean(axis=1) @ p["W_u"] + p["b_u"]) < 1e-12
    assert model.words_forward(words, mask)[0].shape == s.shape


def test_whole_model_gradients_with_cell_positions(xp):
    model, grid, words, mask = tiny(xp, seed=2)     # a seed with no ReLU/max/hinge kink within 1e-5
    model = AlignmentModel({**model.config, "position_cells": 4, "cosine": 3.0}, seed=2, dtype=numpy.float64)
    gen = numpy.random.default_rng(2)
    for name, p in model.params.items():
        if name.startswith("b_") or name == "P":
            p[...] = as_xp(xp, gen.standard_normal(p.shape) * 0.3)
    assert model.params["P"].shape == (5, 6)            # 4 cells and the whole image
    _check_whole_model_gradients(model, grid, words, mask)
    with pytest.raises(ValueError, match="position vectors for 4 grid cells, the features have 3"):
        model.regions_forward(grid[:, :3])
