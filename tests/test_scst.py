"""Self-critical sequence training (captioning.scst): the policy gradient is exact, and SCST raises the reward.

The central check: on a tiny model and vocabulary every caption up to a
short length can be listed, so the expected reward J = sum_w p(w) r(w) and
its gradient (by central differences) are exact; the expectation of the
policy-gradient estimate, sum_w p(w) (r(w) - b) grad log p(w) computed with
the models' own teacher-forced backward pass, must equal it, for any baseline b.
"""
import json

import numpy
import pytest

from captioning.cli import main
from captioning.checkpoint import load_checkpoint
from captioning.metrics import CiderD, cider_d_per_image
from captioning.models import MODELS, build
from captioning.scst import advantages, sample_captions, sampled_caption_batch
from captioning.scst import every_caption as scst_every_caption
from nn import losses
from nn.gradcheck import eval_numerical_gradient, rel_error

V, MAX_LENGTH, END = 5, 3, 2          # ids: 0 <NULL>, 1 <START>, 2 <END>, 3 and 4 words


def tiny_model(kind, seed=0):
    config = {"model": kind, "vocab_size": V, "feature_dim": 3, "wordvec_dim": 3, "hidden_dim": 4,
              "attention_dim": 3, "dropout": 0.3, "doubly_stochastic": 0.5, "null_id": 0, "start_id": 1,
              "end_id": END}
    model = build(config, seed=seed, dtype=numpy.float64).eval()
    # sharper than at initialisation, so that the captions' probabilities differ a lot
    for name, value in model.params.items():
        model.params[name] = value * 3
    return model


def tiny_features(model, num_images=2, seed=1):
    shape = (num_images, 3) if model.feature_kind == "pooled" else (num_images, 4, 3)
    return numpy.random.default_rng(seed).standard_normal(shape)


def every_caption():
    """Every token sequence the sampler can produce with max length 3. (tokens (S, 3), lengths (S,))"""
    return scst_every_caption(V, END, MAX_LENGTH)


def caption_log_probs(model, features, tokens, lengths):
    """log p(caption | image) (num_images, S) of every caption for every image, by decode_step."""
    num_images, num_captions = len(features), len(tokens)
    state = model.init_decode_state(numpy.repeat(features, num_captions, axis=0))
    rows = numpy.tile(tokens, (num_images, 1))
    total = numpy.zeros(len(rows))
    words = numpy.full(len(rows), model.start_id)
    for t in range(MAX_LENGTH):
        log_probs, state, _ = model.decode_step(words, state)
        words = rows[:, t]
        total += numpy.where(t < numpy.tile(lengths, num_images), log_probs[numpy.arange(len(rows)), words], 0)
    return total.reshape(num_images, num_captions)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_expected_policy_gradient_equals_the_gradient_of_the_expected_reward(kind):
    model = tiny_model(kind)
    features = tiny_features(model)
    tokens, lengths = every_caption()
    rewards = numpy.random.default_rng(2).random((len(features), len(tokens)))   # any reward of (image, caption)
    probs = numpy.exp(caption_log_probs(model, features, tokens, lengths))
    assert numpy.allclose(probs.sum(axis=1), 1.0)          # the list is complete: a distribution per image

    def expected_reward():
        return float((numpy.exp(caption_log_probs(model, features, tokens, lengths)) * rewards).sum())

    # The estimator (r - b) grad log p(w), averaged over w with the weights p(w), through the
    # model's teacher-forced backward pass; the baseline b (per image) must not change it.
    baseline = numpy.array([0.7, -0.2])
    captions, mask = sampled_caption_batch(numpy.tile(tokens, (2, 1)), numpy.tile(lengths, 2),
                                           model.start_id, model.null_id)
    rows = len(captions)
    weight = (probs * (rewards - baseline[:, None])).reshape(-1) * rows      # the loss divides by N = rows
    loss, grads, _ = model.forward_backward(numpy.repeat(features, len(tokens), axis=0), captions,
                                            token_weights=mask * weight[:, None])
    for name, param in model.params.items():
        numeric = eval_numerical_gradient(expected_reward, param, h=1e-5)
        # (a wrong estimator, e.g. one without the end token's probability, is off by ~1e-3 here)
        assert numpy.allclose(-grads[name], numeric, rtol=1e-6, atol=1e-9), name


def test_the_sampler_draws_each_caption_with_its_probability():
    model = tiny_model("show-tell")
    features = tiny_features(model, num_images=1)
    tokens, lengths = every_caption()
    probs = numpy.exp(caption_log_probs(model, features, tokens, lengths))[0]
    draws = 20000
    sampled, sampled_lengths = sample_captions(model, features, MAX_LENGTH, numpy.random.default_rng(0),
                                               samples=draws)
    index = {(tuple(row[:n])): k for k, (row, n) in enumerate(zip(tokens, lengths))}
    counts = numpy.zeros(len(tokens))
    for row, n in zip(sampled, sampled_lengths):
        counts[index[tuple(row[:n])]] += 1
    # each frequency within 4.5 standard deviations of its probability
    assert numpy.all(numpy.abs(counts / draws - probs) <= 4.5 * numpy.sqrt(probs * (1 - probs) / draws) + 1e-9)
    assert (sampled_lengths == MAX_LENGTH).any() and (sampled[:, :MAX_LENGTH - 1] == 0).any()   # no END; <NULL>
    again, _ = sample_captions(model, features, MAX_LENGTH, numpy.random.default_rng(0), samples=draws)
    assert numpy.array_equal(sampled, again)                  # one seed, one set of captions


def _samples_one_step_at_a_time(model, features, max_length, rng, samples):
    """sample_captions without its batch tricks, as a reference: every row decodes at every step
    (no finished rows dropped) and draws its number from rng.random(rows) at that step."""
    state = {key: numpy.repeat(value, samples, axis=0) for key, value in model.init_decode_state(features).items()}
    rows = len(features) * samples
    tokens = numpy.full((rows, max_length), model.null_id, dtype=numpy.int64)
    lengths = numpy.zeros(rows, dtype=numpy.int64)
    words, live = numpy.full(rows, model.start_id), numpy.ones(rows, dtype=bool)
    for step in range(max_length):
        log_probs, state, _ = model.decode_step(words, state)
        cdf = numpy.cumsum(numpy.exp(log_probs), axis=1)
        words = numpy.minimum((cdf < rng.random(rows)[:, None] * cdf[:, -1:]).sum(axis=1), cdf.shape[1] - 1)
        tokens[live, step] = words[live]
        lengths[live] += 1
        live &= words != model.end_id
        if not live.any():
            return tokens[:, :step + 1], lengths
    return tokens, lengths


def test_the_sampler_sends_its_random_numbers_to_the_device_once(monkeypatch):
    """One upload of every step's uniforms per call, not one per step (on the GPU an upload may
    wait for the step's kernels); the captions stay those of one draw per row and step, finished
    rows dropped or not."""
    import captioning.scst as scst

    model = tiny_model("attention")
    features = tiny_features(model, num_images=3)
    expected, expected_lengths = _samples_one_step_at_a_time(model, features, 8, numpy.random.default_rng(5), 4)
    assert (expected_lengths < expected_lengths.max()).sum() >= 2     # rows end early: the sampler drops them
    uploads = []
    asarray = scst.backend.asarray
    monkeypatch.setattr(scst.backend, "asarray", lambda a, *args, **kw: uploads.append(
        numpy.asarray(a).dtype.kind) or asarray(a, *args, **kw))
    tokens, lengths = sample_captions(model, features, 8, numpy.random.default_rng(5), samples=4)
    assert uploads.count("f") == 1 and lengths.max() > 2
    assert numpy.array_equal(tokens, expected) and numpy.array_equal(lengths, expected_lengths)


def test_policy_gradient_loss_gradient_and_values_by_hand():
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((3, 4, 6))
    sampled = rng.integers(0, 6, size=(3, 4))
    mask = numpy.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    adv = numpy.array([0.5, -2.0, 1.5])
    loss, dx = losses.policy_gradient_loss(x, sampled, mask, adv)
    log_p = losses.log_softmax(x)[numpy.arange(3)[:, None], numpy.arange(4), sampled]
    assert loss == pytest.approx(-(adv[:, None] * mask * log_p).sum() / 3, rel=1e-12)
    numeric = eval_numerical_gradient(lambda: losses.policy_gradient_loss(x, sampled, mask, adv)[0], x)
    assert rel_error(dx, numeric) < 1e-8
    # a 0/1 weight is the masked cross-entropy
    same = losses.weighted_temporal_softmax_loss(x, sampled, mask.astype(float))
    masked = losses.temporal_softmax_loss(x, sampled, mask)
    assert same[0] == pytest.approx(masked[0]) and numpy.allclose(same[1], masked[1])
    with pytest.raises(ValueError, match="advantages"):
        losses.policy_gradient_loss(x, sampled, mask, adv[:2])
    with pytest.raises(TypeError, match="weights must be a floating"):
        losses.weighted_temporal_softmax_loss(x, sampled, mask)


def test_baselines_greedy_and_the_mean_of_the_other_samples():
    rewards = numpy.array([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])       # 2 images x 3 samples
    adv, base = advantages(rewards, numpy.array([1.5, 1.0]), 3, "greedy")
    assert numpy.allclose(base, [1.5, 1.5, 1.5, 1.0, 1.0, 1.0]) and numpy.allclose(adv, rewards - base)
    adv, base = advantages(rewards, None, 3, "samples")
    assert numpy.allclose(base, [4.0, 3.5, 1.5, 1.5, 1.5, 0.0])
    with pytest.raises(ValueError, match="at least 2"):
        advantages(rewards, None, 1, "samples")


def test_cider_with_fixed_document_frequencies_scores_like_the_corpus_cider():
    refs = [["a red circle", "a red round circle"], ["a blue square", "the blue square"], ["two green dots"]]
    hyps = ["a red circle", "blue square", "green dots green"]
    scorer = CiderD(refs)
    assert numpy.allclose(scorer.scores([0, 1, 2], hyps), cider_d_per_image(refs, hyps), atol=1e-15)
    # any image, any number of times: each hypothesis against the references of the image it names
    assert numpy.allclose(scorer.scores([1, 1, 0], ["blue square", "red circle", "a red circle"]),
                          [cider_d_per_image(refs, hyps)[1], 0.0, cider_d_per_image(refs, hyps)[0]])
    with pytest.raises(ValueError, match="image indices"):
        scorer.scores([3], ["x"])


# ------------------------------------------------------------------ the command

TINY = ["--hidden", "24", "--embed", "16", "--attention-dim", "16"]


@pytest.fixture(scope="module")
def ce_checkpoint(tmp_path_factory):
    """A short cross-entropy shapes run (show-tell, 300 images, 1 epoch) to start from."""
    out = tmp_path_factory.mktemp("ce")
    assert main(["train", "--model", "show-tell", "--shapes-train", "300", "--epochs", "1", "--batch-size", "16",
                 "--lr", "1e-2", "--beam", "1", "--val-images", "40", *TINY, "--out", str(out), "--quiet"]) == 0
    return out / "best.npz"


def expected_reward(checkpoint, split, samples=8):
    """The mean CIDEr-D reward of `samples` captions sampled for every image of `split` (a fixed seed:
    two checkpoints are compared on the same random numbers, which makes the difference precise)."""
    from captioning.encoders import make_encoder

    ckpt = load_checkpoint(checkpoint)
    encoder = make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype).eval()
    features = encoder.encode(split.inputs, ckpt.model.feature_kind, ckpt.model.dtype)
    tokens, lengths = sample_captions(ckpt.model, features, 20, numpy.random.default_rng(0), samples=samples)
    captions = [ckpt.vocabulary.decode(row[:n]) for row, n in zip(tokens, lengths)]
    return CiderD(split.references).scores(numpy.repeat(numpy.arange(len(split)), samples), captions).mean()


def test_scst_on_shapes_raises_the_reward_and_resumes(ce_checkpoint, tmp_path, capsys):
    from captioning.data.datasets import DATASETS

    out = tmp_path / "scst"
    args = ["train", "--scst", "--init", str(ce_checkpoint), "--shapes-train", "300", "--epochs", "2",
            "--batch-size", "25", "--scst-baseline", "samples", "--scst-samples", "8", "--lr", "1e-3",
            "--val-images", "40", "--out", str(out)]
    assert main(args + ["--epochs", "1"]) == 0          # the first epoch; then --resume goes on to the second
    assert main(args + ["--resume"]) == 0
    printed = capsys.readouterr().out
    assert "start (" in printed and "resuming" in printed
    assert "reward" in printed.split("resuming")[1] and "dev CIDEr-D" in printed.split("resuming")[1]
    history = load_checkpoint(out / "last.npz").training["progress"]["history"]
    assert [r["epoch"] for r in history] == [0, 1, 2]     # 0: the --init checkpoint, scored before training
    # The expected reward, what SCST climbs, of the 300 training images: 0.706 at the start, and
    # +0.058 to +0.078 after these 24 steps with seeds 0..3 (+0.012 to +0.04 with the greedy baseline, K=4)
    train = DATASETS["shapes"].load(n_train=300, seed=0).splits["train"]
    assert expected_reward(out / "last.npz", train) > expected_reward(ce_checkpoint, train) + 0.03
    best = load_checkpoint(out / "best.npz").training["progress"]
    assert best["best_cider"] == max(r["dev_cider"] for r in history) >= history[0]["dev_cider"]
    assert (out / "curves.png").is_file()
    # a self-critical run is not resumed as a cross-entropy one, nor the other way round
    assert main(["train", "--shapes-train", "300", "--batch-size", "25", "--out", str(out), "--resume"]) == 2
    assert "holds a self-critical run, this is a cross-entropy run" in capsys.readouterr().err
    ce_copy = tmp_path / "ce_copy"             # a cross-entropy run's last.npz, away from --init itself
    ce_copy.mkdir()
    (ce_copy / "last.npz").write_bytes((ce_checkpoint.parent / "last.npz").read_bytes())
    assert main(args + ["--resume", "--out", str(ce_copy)]) == 2
    assert "holds a cross-entropy run, this is a self-critical run" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["attention", "lrcn"])
def test_scst_trains_every_model_and_evaluate_reads_its_checkpoint(kind, tmp_path, capsys):
    ce, out = tmp_path / "ce", tmp_path / "scst"
    assert main(["train", "--model", kind, "--shapes-train", "40", "--epochs", "1", "--batch-size", "20",
                 "--val-images", "10", *TINY, "--out", str(ce), "--quiet"]) == 0
    assert main(["train", "--scst", "--init", str(ce / "best.npz"), "--shapes-train", "40", "--epochs", "1",
                 "--batch-size", "20", "--scst-baseline", "samples", "--scst-samples", "3", "--val-images", "10",
                 "--out", str(out)]) == 0
    assert "20 images x 3 samples, baseline the mean CIDEr-D of the other 2 samples" in capsys.readouterr().out
    history = load_checkpoint(out / "last.npz").training["progress"]["history"]
    assert [r["epoch"] for r in history] == [0, 1] and history[1]["train_reward"] > 0
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--split", "test", "--max-images", "5"]) == 0
    assert "CIDEr-D" in capsys.readouterr().out


@pytest.mark.parametrize("options, message", [
    (["--scst"], "--scst needs --init CKPT"),
    (["--init", "x.npz"], "give --scst too"),
    (["--scst", "--init", "missing.npz"], "--init: checkpoint not found: missing.npz"),
    (["--scst", "--init", "{ckpt}", "--hidden", "8"], "--hidden does not go with --scst"),
    (["--scst", "--init", "{ckpt}", "--scst-baseline", "samples", "--scst-samples", "1"],
     "--scst-samples must be >= 2"),
    (["--scst-samples", "3"], "--scst-samples is an option of self-critical training"),
    (["--scst-baseline", "greedy"], "--scst-baseline is an option of self-critical training"),
])
def test_scst_refuses_bad_options_with_one_line(options, message, ce_checkpoint, tmp_path, capsys):
    options = [o.replace("{ckpt}", str(ce_checkpoint)) for o in options]
    assert main(["train", *options, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_scst_never_writes_over_its_init_checkpoint(ce_checkpoint, tmp_path, monkeypatch, capsys):
    """The cross-entropy run's folder is outputs/<data>_<model>, its best.npz the usual --init: a
    self-critical run without --out goes to outputs/<data>_<model>_scst, and an --out that would
    replace --init is refused."""
    import shutil

    monkeypatch.chdir(tmp_path)
    ce = tmp_path / "outputs" / "shapes_show-tell"
    ce.mkdir(parents=True)
    shutil.copy(ce_checkpoint, ce / "best.npz")
    before = (ce / "best.npz").read_bytes()
    quick = ["--shapes-train", "40", "--epochs", "1", "--batch-size", "20", "--val-images", "10"]
    assert main(["train", "--scst", "--init", "outputs/shapes_show-tell/best.npz", *quick, "--quiet"]) == 0
    assert (tmp_path / "outputs" / "shapes_show-tell_scst" / "best.npz").is_file()
    assert main(["train", "--scst", "--init", str(ce / "best.npz"), *quick, "--out", str(ce)]) == 2
    assert "would overwrite the --init checkpoint" in capsys.readouterr().err
    assert (ce / "best.npz").read_bytes() == before and not (ce / "last.npz").exists()


def test_scst_refuses_a_checkpoint_of_another_data_set(ce_checkpoint, tmp_path, capsys):
    ckpt = load_checkpoint(ce_checkpoint)
    from captioning.checkpoint import save_checkpoint
    other = tmp_path / "flickr.npz"
    save_checkpoint(other, ckpt.model, ckpt.vocabulary, ckpt.encoder, ckpt.encoder_state,
                    training=json.loads(json.dumps({**ckpt.training, "data": {"name": "flickr8k"}})))
    assert main(["train", "--scst", "--init", str(other), "--out", str(tmp_path / "o")]) == 2
    assert "was trained on flickr8k, but this run's data is shapes" in capsys.readouterr().err


def test_scst_from_a_fine_tuned_checkpoint_keeps_its_encoder_and_reads_its_activation_cache(tmp_path, capsys):
    from data_fixtures import make_original, tiny_corpus

    root = make_original(tmp_path / "flickr", *tiny_corpus())
    cache, ce, out = tmp_path / "ft1", tmp_path / "ce", tmp_path / "scst"
    assert main(["features", "--data", str(root), "--fine-tune-blocks", "1", "--out", str(cache),
                 "--no-progress"]) == 0
    assert main(["train", "--data", str(root), "--features", str(cache), "--fine-tune-blocks", "1", "--model",
                 "show-tell", "--epochs", "1", "--batch-size", "10", *TINY, "--min-count", "1", "--quiet",
                 "--out", str(ce)]) == 0
    assert main(["train", "--scst", "--init", str(ce / "best.npz"), "--data", str(root), "--features", str(cache),
                 "--epochs", "1", "--batch-size", "4", "--out", str(out)]) == 0
    assert "efficientnet_lite0_ft (frozen here)" in capsys.readouterr().out
    start, after = load_checkpoint(ce / "best.npz"), load_checkpoint(out / "last.npz")
    assert all(numpy.array_equal(start.encoder_state[k], after.encoder_state[k]) for k in start.encoder_state)
    assert not numpy.array_equal(start.model.params["W_vocab"], after.model.params["W_vocab"])


def test_an_interrupted_scst_run_resumes_exactly(ce_checkpoint, tmp_path):
    from captioning.data.datasets import DATASETS
    from captioning.encoders import make_encoder
    from captioning.scst import SCSTConfig, SelfCriticalTrainer

    data = DATASETS["shapes"].load(n_train=60, seed=0, max_images=20)

    def trainer(out):
        ckpt = load_checkpoint(ce_checkpoint)
        encoder = make_encoder(ckpt.encoder, ckpt.encoder_state, dtype=ckpt.model.dtype)
        config = SCSTConfig(epochs=2, batch_size=8, lr=1e-3, samples=2, val_images=10, seed=3)
        return SelfCriticalTrainer(ckpt.model, ckpt.vocabulary, encoder, data.splits["train"], data.splits["dev"],
                                   config, tmp_path / out, log=lambda line: None, data_spec=data.spec)

    whole = trainer("whole")
    whole.fit()
    first = trainer("parts")
    first.fit(stop_after_steps=4)                       # 3 steps an epoch: stops inside the second
    rest = trainer("parts").resume(tmp_path / "parts" / "last.npz")
    assert rest.progress.step == 4 and rest.progress.epoch == 1
    rest.fit()
    for name, value in whole.model.params.items():
        assert numpy.array_equal(value, rest.model.params[name]), name
    assert [r["dev_cider"] for r in whole.progress.history] == [r["dev_cider"] for r in rest.progress.history]
