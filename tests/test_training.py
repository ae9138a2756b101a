"""Training: overfitting, exact resume, NaN stop, checkpoints and their mismatch errors."""
import os
from dataclasses import replace

import numpy
import pytest

from nn import backend
from nn.optim import Adam
from nn.persist import save_npz
from captioning.checkpoint import check_vocabulary, load_checkpoint
from captioning.data.datasets import ShapesDataset
from captioning.data.text import Vocabulary
from captioning.encoders import FrozenFeatures, TrainableEncoder
from captioning.features import _Rows
from captioning.models import MODELS, ConfigMismatchError, build
from captioning.training import TrainConfig, Trainer, TrainingDiverged


@pytest.mark.parametrize("kind", ["show-tell", "attention", "lrcn"])
def test_overfits_a_batch_of_50_captions(kind):
    """A model that can learn at all drives the loss of 50 fixed captions below 0.1."""
    gen = numpy.random.default_rng(0)
    vocab_size, n = 30, 50
    captions = gen.integers(4, vocab_size, size=(n, 9))
    captions[:, 0] = 1
    lengths = gen.integers(3, 8, size=n)
    for i, length in enumerate(lengths):
        captions[i, length] = 2
        captions[i, length + 1:] = 0
    shape = (n, 24) if MODELS[kind].feature_kind == "pooled" else (n, 4, 24)
    features = gen.standard_normal(shape).astype(numpy.float32)
    model = build({"model": kind, "vocab_size": vocab_size, "feature_dim": 24, "wordvec_dim": 32,
                   "hidden_dim": 64, "attention_dim": 32, "doubly_stochastic": 0.0}, seed=0)
    optimizer = Adam(model, lr=1e-2)
    losses = []
    for _ in range(150):
        loss, _ = model.loss(features, captions)
        optimizer.step()
        losses.append(loss)
    assert losses[0] > 10 * losses[-1]
    assert losses[-1] < 0.1


def _tiny_run(tmp_path, name, epochs=2, **overrides):
    """A Trainer on 8 synthetic images (small CNN end to end + attention decoder)."""
    data = ShapesDataset.load(n_train=8, n_dev=4, n_test=4, seed=3)
    vocab = Vocabulary.build(data.train_tokens(), min_count=1)
    encoder = TrainableEncoder.small_cnn(channels=ShapesDataset.CNN_CHANNELS, image_size=ShapesDataset.IMAGE_SIZE,
                                         seed=1)
    model = build({"model": "attention", "vocab_size": len(vocab), "feature_dim": encoder.feature_dim("grid"),
                   "wordvec_dim": 16, "hidden_dim": 24, "attention_dim": 16, "dropout": 0.3,
                   "doubly_stochastic": 0.05}, seed=2)
    config = TrainConfig(**{"epochs": epochs, "batch_size": 20, "lr": 3e-3, "seed": 5, "log_every": 1e9,
                            **overrides})
    lines = []
    trainer = Trainer(model, vocab, encoder, data.splits["train"], data.splits["dev"], config,
                      tmp_path / name, log=lines.append, data_spec=data.spec)
    return trainer, lines


def _all_params(trainer):
    return {name: backend.to_numpy(param).copy() for name, param, _ in trainer.params.named_parameters()}


@pytest.mark.parametrize("lr_decay_to", [1.0, 0.1])   # constant (plateau rule) / linear decay
def test_resume_mid_epoch_gives_the_same_parameters_as_an_uninterrupted_run(tmp_path, lr_decay_to):
    straight, _ = _tiny_run(tmp_path, "straight", lr_decay_to=lr_decay_to)
    straight.fit()
    assert straight.steps_per_epoch == 2 and straight.progress.step == 4
    if lr_decay_to < 1:   # the last of 4 steps (step 3) ran at lr * (1 - 0.9 * 3 / 4)
        assert straight.optimizer.lr == pytest.approx(3e-3 * (1 - 0.9 * 3 / 4))

    first, lines = _tiny_run(tmp_path, "resumed", lr_decay_to=lr_decay_to)
    first.fit(stop_after_steps=3)            # "interrupted" inside epoch 2 (after step 1 of 2)
    assert any("resume with --resume" in line for line in lines)
    second, _ = _tiny_run(tmp_path, "resumed", lr_decay_to=lr_decay_to)   # a fresh process, same arguments
    second.resume(second.last_path)
    assert (second.progress.epoch, second.progress.batch, second.progress.step) == (1, 1, 3)
    second.fit()

    want, got = _all_params(straight), _all_params(second)
    assert want.keys() == got.keys() and any(k.startswith("encoder.") for k in want)
    for name in want:
        numpy.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # the batchnorm running statistics of the CNN and Adam's moments resume too
    for name, value in straight.encoder.state_dict().items():
        numpy.testing.assert_array_equal(second.encoder.state_dict()[name], value, err_msg=name)
    for key, value in straight.optimizer.state_dict().items():
        numpy.testing.assert_array_equal(backend.to_numpy(second.optimizer.state_dict()[key]),
                                         backend.to_numpy(value), err_msg=key)
    assert [r["dev_bleu"] for r in second.progress.history] == [r["dev_bleu"] for r in straight.progress.history]
    assert os.path.isfile(second.best_path) and os.path.isfile(tmp_path / "resumed" / "curves.png")


def test_a_time_limit_stop_inside_an_epoch_resumes_exactly(tmp_path):
    """--max-minutes validates a partial epoch (so that best.npz exists); that validation must
    not count for the plateau rule or early stopping, or the resumed run takes other steps."""
    settings = {"epochs": 3, "lr_patience": 0}      # the plateau rule halves lr at once
    straight, _ = _tiny_run(tmp_path, "straight", **settings)
    straight.fit()
    first, _ = _tiny_run(tmp_path, "limited", **settings)
    first.fit(stop_after_steps=3)                   # inside epoch 2 ...
    first._end_of_epoch(partial=True)               # ... where the time limit validates and saves
    second, _ = _tiny_run(tmp_path, "limited", **settings)
    second.resume(second.last_path)
    second.fit()
    assert second.optimizer.lr == straight.optimizer.lr
    assert second.progress.epochs_since_best == straight.progress.epochs_since_best
    want, got = _all_params(straight), _all_params(second)
    for name in want:
        numpy.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_resume_refuses_settings_that_would_make_it_another_run(tmp_path):
    first, _ = _tiny_run(tmp_path, "run")
    first.fit(stop_after_steps=1)
    changed, _ = _tiny_run(tmp_path, "run", batch_size=4, seed=7)
    with pytest.raises(ConfigMismatchError, match=r"batch_size: checkpoint 20, now 4; seed: checkpoint 5, now 7"):
        changed.resume(changed.last_path)
    own_rate, _ = _tiny_run(tmp_path, "run", encoder_lr=3e-4)      # the encoder's rate decides the updates too
    assert own_rate.optimizer.lr_of("encoder.body.0.w") == pytest.approx(3e-4)
    assert own_rate.optimizer.lr_of("decoder.W_embed") == pytest.approx(3e-3)
    with pytest.raises(ConfigMismatchError, match=r"encoder_lr: checkpoint None, now 0.0003"):
        own_rate.resume(own_rate.last_path)
    longer, _ = _tiny_run(tmp_path, "run", epochs=5)   # training longer is allowed (constant lr)
    longer.resume(longer.last_path)
    assert longer.progress.step == 1


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer, _ = _tiny_run(tmp_path, "nan", epochs=1)
    trainer.fit()
    before = open(trainer.last_path, "rb").read()
    good = load_checkpoint(trainer.last_path).model.state_dict()

    poisoned, _ = _tiny_run(tmp_path, "nan", epochs=3)
    poisoned.resume(poisoned.last_path)
    poisoned.model.params["W_out"][0, 0] = numpy.nan        # what a diverged update leaves behind
    with pytest.raises(TrainingDiverged, match=r"loss became nan .* epoch 2, step 3.*last good checkpoints"):
        poisoned.fit()
    assert open(trainer.last_path, "rb").read() == before
    for name, value in load_checkpoint(trainer.last_path).model.state_dict().items():
        numpy.testing.assert_array_equal(value, good[name])


def test_checkpoint_round_trip_and_mismatch_errors(tmp_path):
    trainer, _ = _tiny_run(tmp_path, "ckpt", epochs=1)
    trainer.fit()
    ckpt = load_checkpoint(trainer.best_path)
    assert ckpt.model.config == trainer.model.config and not ckpt.model.training
    assert ckpt.vocabulary == trainer.vocabulary and ckpt.encoder["name"] == "small_cnn"
    for name, value in trainer.model.state_dict().items():
        numpy.testing.assert_array_equal(ckpt.model.state_dict()[name], value)
    assert ckpt.training["progress"]["epoch"] == 1 and ckpt.training["rng"]["seed"] == 5

    # another model configuration: a clear error, not a shape crash
    other, _ = _tiny_run(tmp_path, "other", epochs=1)
    other.model = build(dict(other.model.config, hidden_dim=32))
    with pytest.raises(ConfigMismatchError, match="hidden_dim"):
        other.resume(trainer.last_path)
    # another vocabulary
    with pytest.raises(ConfigMismatchError, match="vocabulary"):
        check_vocabulary(ckpt, Vocabulary(["zebra", "giraffe"]), what="Flickr8k")
    # parameters that do not fit the recorded configuration
    arrays = {"decoder/" + k: v for k, v in trainer.model.state_dict().items()}
    arrays["decoder/Wh"] = arrays["decoder/Wh"][:, :8]
    from captioning.checkpoint import FORMAT
    save_npz(tmp_path / "bad.npz", arrays, meta={"format": FORMAT, "model": trainer.model.config,
                                                  "vocabulary": trainer.vocabulary.to_dict(), "encoder": {}})
    with pytest.raises(ConfigMismatchError, match=r"Wh: checkpoint \(24, 8\) vs model \(24, 96\)"):
        load_checkpoint(tmp_path / "bad.npz")
    save_npz(tmp_path / "plain.npz", {"w": numpy.zeros(3)})
    with pytest.raises(ConfigMismatchError, match="not a captioning checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_checkpoint(tmp_path / "missing.npz")


def test_frozen_features_training_improves_dev_bleu_and_reports_progress(tmp_path):
    """Cached-feature path: fixed random 'features' that identify each image's caption."""
    data = ShapesDataset.load(n_train=40, n_dev=40, n_test=1, seed=4)
    train = data.splits["train"]
    vocab = Vocabulary.build(data.train_tokens(), min_count=1)
    gen = numpy.random.default_rng(0)
    table = gen.standard_normal((40, 6, 16)).astype(numpy.float32)
    train = replace(train, features=table, tokens=[refs[:1] for refs in train.references])
    model = build({"model": "attention", "vocab_size": len(vocab), "feature_dim": 16, "wordvec_dim": 16,
                   "hidden_dim": 32, "attention_dim": 16, "doubly_stochastic": 0.0}, seed=0)
    config = TrainConfig(epochs=14, batch_size=5, lr=1e-2, log_every=0, patience=14, lr_patience=14)
    lines = []
    trainer = Trainer(model, vocab, FrozenFeatures({"name": "efficientnet_lite0"}), train, train, config,
                      tmp_path / "frozen", log=lines.append)
    history = trainer.fit()
    assert history[0]["dev_bleu"][3] < 0.1 and history[-1]["dev_bleu"][3] > 0.4
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2.5
    assert any(line.startswith("epoch 1/14  step 8/8  loss") and "tokens/s" in line and "ETA" in line
               for line in lines)
    assert any(line.startswith("epoch 14 done: train loss") and "dev BLEU-4" in line for line in lines)


def test_the_trainer_draws_the_batches_of_data_batches_once_per_epoch(tmp_path):
    data = ShapesDataset.load(n_train=200, n_dev=2, n_test=2, seed=0)
    vocab = Vocabulary.build(data.train_tokens(), min_count=1)
    model = build({"model": "show-tell", "vocab_size": len(vocab), "feature_dim": 4})
    trainer = Trainer(model, vocab, FrozenFeatures({"name": "efficientnet_lite0"}), data.splits["train"],
                      data.splits["dev"], TrainConfig(batch_size=16, seed=3, length_buckets=20), tmp_path,
                      log=lambda line: None)
    batches = trainer.epoch_batches(0)
    assert len(batches) == trainer.steps_per_epoch == 63            # 1000 captions: 3 windows of 20 + 3
    assert trainer.epoch_batches(0) is batches
    assert [b.tolist() for b in trainer.epoch_batches(1)] != [b.tolist() for b in batches]
    assert [b.tolist() for b in trainer.epoch_batches(0)] == [b.tolist() for b in batches]


def test_resuming_a_run_that_used_its_time_or_stopped_says_what_to_do(tmp_path):
    first, _ = _tiny_run(tmp_path, "timed", max_minutes=1.0)
    first.fit(stop_after_steps=1)
    first.progress.elapsed = 61.0                  # as if the minute had been used
    first.save(first.last_path)
    second, lines = _tiny_run(tmp_path, "timed", max_minutes=1.0)
    second.resume(second.last_path)
    steps = second.progress.step
    second.fit()
    assert second.progress.step == steps           # not one step more
    assert any("already trained its --max-minutes 1.0" in line for line in lines)
    done, lines = _tiny_run(tmp_path, "decayed", epochs=1, lr_decay_to=0.1)
    done.fit()
    done.fit()
    assert "its learning rate decayed over exactly these epochs" in lines[-1]


def test_each_epoch_records_the_teacher_forced_dev_loss_and_curves_png_draws_it(tmp_path):
    """dev_loss: the model's loss (dropout off) on every caption of the validation images, averaged over
    captions like the training loss; curves.png draws it in its own colour."""
    from PIL import Image
    from captioning.curves_png import DEV
    from captioning.data.batches import encode_captions
    trainer, lines = _tiny_run(tmp_path, "run", epochs=1)
    history = trainer.fit()
    dev = trainer.dev_data.head(trainer.config.val_images)
    table = encode_captions(dev, trainer.vocabulary, trainer.config.max_words)
    trainer.model.eval()
    trainer.encoder.eval()
    features = trainer.encoder.encode(dev.inputs[table.image_index], trainer.model.feature_kind, trainer.model.dtype)
    wanted, _ = trainer.model.loss(features, backend.asarray(table.captions))
    assert abs(history[0]["dev_loss"] - wanted) < 1e-4 * wanted
    assert f"dev loss {wanted:.3f}" in "\n".join(lines)
    with Image.open(tmp_path / "run" / "curves.png") as image:
        pixels = numpy.asarray(image.convert("RGB")).reshape(-1, 3)
    assert (pixels == DEV).all(axis=1).any()


def _feature_cache_trainers(tmp_path, log=lambda line: None, cache_view=True):
    """(features, {False: trainer, True: trainer}): the same show-tell run on cached float16
    features of 40 shapes images, without and with --features-on-device. cache_view: the split
    holds them as --features does, a view of a feature cache's rows (captioning.features._Rows,
    no nbytes, no __array__), else as one array (benchmarks/epoch_time.py)."""
    data = ShapesDataset.load(n_train=40, n_dev=2, n_test=2, seed=0)
    vocab = Vocabulary.build(data.train_tokens(), min_count=1)
    train = data.splits["train"]
    cache = numpy.random.default_rng(0).standard_normal((50, 4)).astype(numpy.float16)
    rows = numpy.random.default_rng(1).permutation(50)[:40]
    train.features = _Rows(cache, rows) if cache_view else cache[rows]
    trainers = {}
    for on in (False, True):
        model = build({"model": "show-tell", "vocab_size": len(vocab), "feature_dim": 4}, seed=1)
        trainers[on] = Trainer(model, vocab, FrozenFeatures({"name": "efficientnet_lite0"}), train,
                               data.splits["dev"], TrainConfig(batch_size=8, seed=3, features_on_device=on),
                               tmp_path / str(on), log=log)
    return cache[rows], trainers


def test_features_on_device_is_the_host_path_on_numpy_and_gives_the_same_steps(tmp_path):
    # On NumPy (and for a trainable encoder) the flag keeps the host path: nothing is copied.
    features, trainers = _feature_cache_trainers(tmp_path)
    losses = {}
    for on, trainer in trainers.items():
        assert trainer._device_inputs is None
        assert (backend.to_numpy(trainer.train_inputs(numpy.array([3, 1]))) == features[[3, 1]]).all()
        losses[on] = [trainer.train_step(0, b)[0] for b in range(3)]
    assert losses[True] == losses[False]


@pytest.mark.parametrize("cache_view", [True, False], ids=["cache-rows", "array"])
def test_features_on_device_copies_the_cache_when_it_fits_and_says_so_when_not(tmp_path, monkeypatch,
                                                                               cache_view):
    # The GPU's free memory stood in for on NumPy, so that both branches of the flag run here.
    monkeypatch.setattr(backend, "device_memory_free", lambda: 1 << 40)
    features, trainers = _feature_cache_trainers(tmp_path / "fits", cache_view=cache_view)
    assert isinstance(trainers[True]._device_inputs, numpy.ndarray)       # one array, as the GPU gets it
    assert trainers[False]._device_inputs is None and trainers[True]._device_inputs is not None
    assert (trainers[True].train_inputs(numpy.array([3, 1])) == features[[3, 1]]).all()
    assert trainers[True].train_inputs(numpy.array([3, 1])).dtype == numpy.float16   # the cache's dtype
    assert [trainers[True].train_step(0, b)[0] for b in range(3)] == [
        trainers[False].train_step(0, b)[0] for b in range(3)]
    monkeypatch.setattr(backend, "device_memory_free", lambda: features.nbytes)     # needs over half of it
    lines = []
    _, trainers = _feature_cache_trainers(tmp_path / "too_big", log=lines.append, cache_view=cache_view)
    assert trainers[True]._device_inputs is None
    assert any("they stay on the host" in line for line in lines), lines


@pytest.mark.gpu
def test_features_on_device_on_cupy_gives_the_same_steps(tmp_path):
    if not backend.cupy_available():
        pytest.skip("CuPy is not installed or no GPU is visible")
    backend.use("cupy")
    _, trainers = _feature_cache_trainers(tmp_path)
    losses = {}
    for on, trainer in trainers.items():
        assert (trainer._device_inputs is not None) == on
        losses[on] = [trainer.train_step(0, b)[0] for b in range(3)]
    assert numpy.allclose(losses[True], losses[False], rtol=1e-6)
