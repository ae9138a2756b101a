"""A new model is one file plus its registry entry: the bag-of-words toy trains and decodes
through the same Trainer, decoders and command line as the real models."""
import numpy
import pytest

from nn import backend
from nn.gradcheck import eval_numerical_gradient, rel_error
from captioning.cli import main
from captioning.data.datasets import ShapesDataset
from captioning.data.text import Vocabulary
from captioning.encoders import TrainableEncoder
from captioning.generation import generate_captions
from captioning.models import MODELS, build
from captioning.training import TrainConfig, Trainer


def test_bag_of_words_gradients_match_finite_differences(xp):
    backend.set_default_float(numpy.float64)
    model = build({"model": "bag-of-words", "vocab_size": 9, "feature_dim": 5, "wordvec_dim": 4}, seed=1)
    gen = numpy.random.default_rng(0)
    captions = gen.integers(3, 9, size=(3, 6))
    captions[:, 0], captions[0, 4:], captions[1, 2:] = 1, [2, 0], [2, 0, 0, 0]
    features, captions = xp.asarray(gen.standard_normal((3, 5))), xp.asarray(captions)
    loss, grads, dfeatures = model.forward_backward(features, captions, feature_grad=True)

    def f():
        return model.forward_backward(features, captions)[0]
    for name, param in model.params.items():
        assert rel_error(eval_numerical_gradient(f, param, h=1e-4), grads[name]) <= 1e-7, name
    assert rel_error(eval_numerical_gradient(f, features, h=1e-4), dfeatures) <= 1e-7
    state, total = model.init_decode_state(features), 0.0   # decoding agrees with training
    for t in range(captions.shape[1] - 1):
        log_probs, state, _ = model.decode_step(captions[:, t], state)
        target = captions[:, t + 1]
        total -= float((log_probs[xp.arange(3), target] * (target != 0)).sum())
    assert total / 3 == pytest.approx(loss, rel=1e-10)


@pytest.mark.parametrize("kind", ["bag-of-words", "lrcn"])
def test_a_pooled_model_trains_end_to_end_through_the_trainer_and_decodes(tmp_path, kind):
    data = ShapesDataset.load(n_train=30, n_dev=6, n_test=2, seed=2)
    vocab = Vocabulary.build(data.train_tokens(), min_count=1)
    encoder = TrainableEncoder.small_cnn(channels=(4, 8), image_size=64, seed=0)
    model_class = MODELS[kind]
    model = build({"model": model_class.name, "vocab_size": len(vocab), "hidden_dim": 16,
                   "feature_dim": encoder.feature_dim(model_class.feature_kind), "wordvec_dim": 16,
                   "null_id": vocab.null_id, "start_id": vocab.start_id, "end_id": vocab.end_id}, seed=0)
    lines = []
    trainer = Trainer(model, vocab, encoder, data.splits["train"], data.splits["dev"],
                      TrainConfig(epochs=3, batch_size=10, lr=1e-2, log_every=1e9), tmp_path, log=lines.append)
    history = trainer.fit()
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert (tmp_path / "best.npz").is_file()
    for beam in (1, 2):
        captions, result = generate_captions(model, encoder, data.splits["test"], vocab, beam=beam, max_length=8)
        assert len(captions) == 2 and result.attention is None
        assert all(word in vocab for words in captions for word in words)


def test_the_command_line_offers_every_registered_model(tmp_path, capsys):
    out = tmp_path / "bow"
    assert main(["train", "--model", "bag-of-words", "--max-images", "12", "--epochs", "1", "--batch-size", "20",
                 "--embed", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model: bag-of-words" in printed
    assert "--checkpoint" in printed and "--attention-png" not in printed   # its suggested commands work
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--max-images", "3"]) == 0
    assert "shapes test: 3 images" in capsys.readouterr().out


TINY = {"wordvec_dim": 4, "hidden_dim": 6, "attention_dim": 5, "dropout": 0.5, "doubly_stochastic": 0.7}


def _tiny_model_and_batch(kind, padded_rows=2):
    """A float64 model of `kind` (dropout 0.5) and 3 features/captions; the first `padded_rows`
    captions end early (<END>, then <NULL> padding)."""
    backend.set_default_float(numpy.float64)
    config = {"model": kind, "vocab_size": 11, "feature_dim": 7,
              **{key: TINY[key] for key in MODELS[kind].config_keys}}
    model = build(config, seed=2)
    gen = numpy.random.default_rng(1)
    shape = (3, 4, 7) if model.feature_kind == "grid" else (3, 7)
    features = backend.asarray(gen.standard_normal(shape))
    captions = gen.integers(3, 11, size=(3, 6))
    captions[:, 0] = 1
    captions[0, 4:] = [2, 0]
    if padded_rows > 1:
        captions[1, 2:] = [2, 0, 0, 0]
    return model, features, backend.asarray(captions)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_forward_loss_is_the_training_loss_without_a_backward_pass(kind, monkeypatch):
    """Validation's dev loss (Trainer.dev_loss) uses forward_loss: the same number as
    forward_backward's loss (attention regulariser included), at the price of the forward pass."""
    model, features, captions = _tiny_model_and_batch(kind)
    model.eval()
    expected = model.forward_backward(features, captions)[0]
    if hasattr(model, "_backward"):
        monkeypatch.setattr(model, "_backward", lambda *a, **k: pytest.fail("forward_loss ran the backward pass"))
    assert model.forward_loss(features, captions) == expected


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_forward_loss_in_train_mode_applies_the_same_dropout_as_training(kind):
    """With dropout on (train mode) and one dropout_seed, forward_loss equals forward_backward's loss."""
    model, features, captions = _tiny_model_and_batch(kind, padded_rows=1)
    model.train()
    expected = model.forward_backward(features, captions, dropout_seed=5)[0]
    assert model.forward_loss(features, captions, dropout_seed=5) == expected
