"""Captioning models: whole-model gradient checks, decoding agrees with training, clear errors."""
import numpy
import pytest

from nn import backend
from nn.gradcheck import eval_numerical_gradient, rel_error
from captioning.models import ConfigMismatchError, build

POOLED = ("show-tell", "lrcn")    # the models that read one feature vector per image
TINY = {"vocab_size": 9, "feature_dim": 5, "wordvec_dim": 4, "hidden_dim": 6, "attention_dim": 5}


def _tiny_batch(xp, kind, seed=0):
    """3 images, captions of 5 steps with <END> and padding at different places."""
    gen = numpy.random.default_rng(seed)
    captions = gen.integers(3, TINY["vocab_size"], size=(3, 6))
    captions[:, 0] = 1                       # <START>
    captions[0, 4], captions[0, 5] = 2, 0    # <END>, <NULL>
    captions[1, 2], captions[1, 3:] = 2, 0
    shape = (3, 5) if kind in POOLED else (3, 4, 5)
    features = xp.asarray(gen.standard_normal(shape))
    return features, xp.asarray(captions)


@pytest.mark.parametrize("kind", ["show-tell", "attention", "lrcn"])
def test_whole_model_gradient_check(xp, kind):
    """Every parameter's and the features' gradient against finite differences, float64, dropout on."""
    backend.set_default_float(numpy.float64)
    model = build({"model": kind, "dropout": 0.3, **TINY}, seed=1)
    # Word vectors of a trained model's size (std ~1, not the init's 0.1): with init-sized ones, LRCN's
    # words-only first layer, which starts from h = 0, has Wh1 gradients near 1e-8, where finite
    # differences are noise (relative error 1e-4 for a correct backward pass).
    model.params["W_embed"] = model.params["W_embed"] * 10
    features, captions = _tiny_batch(xp, kind)
    loss, grads, dfeatures = model.forward_backward(features, captions, feature_grad=True, dropout_seed=5)
    assert set(grads) == set(model.params)

    def f():
        return model.forward_backward(features, captions, dropout_seed=5)[0]

    for name, param in model.params.items():
        numeric = eval_numerical_gradient(f, param, h=1e-4)
        assert rel_error(numeric, grads[name]) <= 1e-5, name
        assert float(abs(grads[name]).max()) > 0, f"{name} got no gradient"
    numeric = eval_numerical_gradient(f, features, h=1e-4)
    assert rel_error(numeric, dfeatures) <= 1e-5


@pytest.mark.parametrize("kind", ["show-tell", "attention", "lrcn"])
def test_decode_steps_reproduce_teacher_forced_loss(xp, kind):
    """Feeding the true words through decode_step gives the training loss (eval mode, no regulariser)."""
    backend.set_default_float(numpy.float64)
    model = build({"model": kind, "dropout": 0.5, "doubly_stochastic": 0.0, **TINY}, seed=2).eval()
    features, captions = _tiny_batch(xp, kind, seed=3)
    loss, _ = model.loss(features, captions)
    state = model.init_decode_state(features)
    total = 0.0
    for t in range(captions.shape[1] - 1):
        log_probs, state, attention = model.decode_step(captions[:, t], state)
        target = captions[:, t + 1]
        picked = log_probs[xp.arange(3), target] * (target != 0)
        total -= float(picked.sum())
        if kind == "attention":
            assert attention.shape == (3, 4)
            numpy.testing.assert_allclose(backend.to_numpy(attention.sum(axis=1)), 1.0)
        else:
            assert attention is None
    assert total / 3 == pytest.approx(loss, rel=1e-10)


def test_lrcn_is_factored_its_first_layer_never_sees_the_image():
    """Zero initial states; layer 1 depends on the words only, layer 2 on the image at every step."""
    backend.set_default_float(numpy.float64)
    model = build({"model": "lrcn", **TINY}, seed=4).eval()
    features, captions = _tiny_batch(numpy, "lrcn", seed=5)
    states = [model.init_decode_state(f) for f in (features, -features)]
    for key in ("h1", "c1", "h2", "c2"):
        assert not states[0][key].any()
    for t in range(captions.shape[1] - 1):
        steps = [model.decode_step(captions[:, t], state) for state in states]
        states = [state for _, state, _ in steps]
        numpy.testing.assert_array_equal(states[0]["h1"], states[1]["h1"])
        assert not numpy.allclose(states[0]["h2"], states[1]["h2"])
        assert not numpy.allclose(steps[0][0], steps[1][0])


def test_doubly_stochastic_regulariser_adds_the_documented_penalty():
    """loss(lambda) - loss(0) = lambda / N * sum_i (1 - sum_t alpha_ti)^2 over unmasked steps."""
    backend.set_default_float(numpy.float64)
    features, captions = _tiny_batch(numpy, "attention", seed=4)
    plain = build({"model": "attention", "doubly_stochastic": 0.0, **TINY}, seed=3)
    regular = build({"model": "attention", "doubly_stochastic": 0.7, **TINY}, seed=3)
    state = plain.init_decode_state(features)
    attention_sum = numpy.zeros((3, 4))
    for t in range(captions.shape[1] - 1):
        _, state, alpha = plain.decode_step(captions[:, t], state)
        attention_sum += alpha * (captions[:, t + 1] != 0)[:, None]
    penalty = 0.7 / 3 * ((1 - attention_sum) ** 2).sum()
    assert regular.loss(features, captions)[0] - plain.loss(features, captions)[0] == pytest.approx(penalty)


def test_load_state_dict_from_another_configuration_is_a_clear_error():
    small = build({"model": "attention", **TINY})
    other = build({"model": "attention", **dict(TINY, vocab_size=12)})
    with pytest.raises(ConfigMismatchError, match=r"W_embed: checkpoint \(12, 4\) vs model \(9, 4\)"):
        small.load_state_dict(other.state_dict())
    with pytest.raises(ConfigMismatchError, match="missing"):
        small.load_state_dict(build({"model": "show-tell", **TINY}).state_dict())


def test_bad_inputs_name_the_model_and_the_shapes():
    model = build({"model": "attention", **TINY})
    features = numpy.zeros((2, 4, 5), dtype=model.dtype)
    captions = numpy.ones((2, 3), dtype=numpy.int64)
    with pytest.raises(ValueError, match=r"attention: features must be \(N, L, D\)"):
        model.loss(features[:, 0], captions)
    with pytest.raises(ValueError, match="feature_dim=5"):
        model.loss(numpy.zeros((2, 4, 7), dtype=model.dtype), captions)
    with pytest.raises(ValueError, match="word id 9 out of range"):
        model.loss(features, captions * 9)
    with pytest.raises(ValueError, match="word id -1 out of range"):
        model.loss(features, captions * -1)
    with pytest.raises(TypeError, match="integer word ids"):
        model.loss(features, captions.astype(model.dtype))
    with pytest.raises(ValueError, match="unknown model 'lstm'"):
        build({"model": "lstm", **TINY})


@pytest.mark.parametrize("change, message", [
    ({"vocab_size": 0}, "vocab_size must be a positive int"),
    ({"hidden_dim": 0}, "hidden_dim must be a positive int"),
    ({"feature_dim": 2.5}, "feature_dim must be a positive int"),
    ({"end_id": 99}, "three different word ids below vocab_size"),
    ({"start_id": 2, "end_id": 2}, "three different word ids"),
    ({"dropout": 1.5}, "dropout must be in [0, 1)"),
    ({"doubly_stochastic": -1}, "doubly_stochastic must be >= 0"),
    ({"model": "transformer"}, "unknown model"),
])
def test_build_refuses_a_config_that_cannot_make_a_model(change, message):
    with pytest.raises(ConfigMismatchError, match=message.replace("[", r"\[").replace(")", r"\)")):
        build({"model": "attention", **TINY, **change})


@pytest.mark.parametrize("kind", ["show-tell", "attention", "lrcn"])
def test_astype_casts_gradients_and_the_optimizer_follows(kind):
    from nn.optim import Adam
    model = build({"model": kind, **TINY}, seed=1, dtype=numpy.float32)
    features, captions = _tiny_batch(numpy, kind)
    optimizer = Adam(model)
    model.forward_backward(features.astype(numpy.float32), captions)
    optimizer.step()
    model.astype(numpy.float64)
    assert all(p.dtype == g.dtype == numpy.float64 for _, p, g in model.named_parameters())
    model.forward_backward(features, captions)
    optimizer.step()
    assert {m.dtype for m in optimizer.state["m"].values()} == {numpy.dtype(numpy.float64)}


def test_a_caption_model_loads_with_its_optimizer_through_nn_persist(tmp_path):
    from nn import persist
    from nn.optim import Adam
    model = build({"model": "show-tell", **TINY}, seed=1)
    features, captions = _tiny_batch(numpy, "show-tell")
    optimizer = Adam(model)
    model.forward_backward(features.astype(model.dtype), captions)
    optimizer.step()
    persist.save_model(tmp_path / "m.npz", model, optimizer)
    fresh = build({"model": "show-tell", **TINY}, seed=2)
    fresh_optimizer = Adam(fresh)
    persist.load_model(tmp_path / "m.npz", fresh, fresh_optimizer)
    assert fresh_optimizer.t == 1
    for name in model.params:
        numpy.testing.assert_array_equal(fresh.params[name], model.params[name])
    other = build({"model": "show-tell", **{**TINY, "hidden_dim": 7}}, seed=2)
    other_optimizer = Adam(other)
    with pytest.raises(ValueError, match="wrong shapes"):
        persist.load_model(tmp_path / "m.npz", other, other_optimizer)
    assert other_optimizer.t == 0                  # nothing loaded when the model does not fit


def test_load_checkpoint_calls_damaged_metadata_a_damaged_checkpoint(tmp_path):
    from captioning.checkpoint import load_checkpoint
    from nn.persist import load_npz, save_npz
    from captioning.checkpoint import save_checkpoint
    from captioning.data import Vocabulary
    vocabulary = Vocabulary.build([["a", "b", "c", "d", "e"]], min_count=1)
    model = build({"model": "show-tell", **{**TINY, "vocab_size": len(vocabulary)}}, seed=1)
    path = tmp_path / "ok.npz"
    save_checkpoint(path, model, vocabulary, {"name": "small_cnn"})
    arrays, meta = load_npz(path)
    del meta["model"]["feature_dim"]
    save_npz(tmp_path / "bad.npz", arrays, meta=meta)
    with pytest.raises(ConfigMismatchError, match="damaged or incomplete checkpoint.*feature_dim"):
        load_checkpoint(tmp_path / "bad.npz")
    del meta["vocabulary"]
    save_npz(tmp_path / "bad.npz", arrays, meta=meta)
    with pytest.raises(ConfigMismatchError, match="damaged or incomplete checkpoint.*vocabulary"):
        load_checkpoint(tmp_path / "bad.npz")
