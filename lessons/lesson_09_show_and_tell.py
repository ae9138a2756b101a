"""Lesson 9: the encoder-decoder - Show and Tell.

Show and Tell (Vinyals et al. 2015) joins the two halves: an image encoder
gives one vector per image, an LSTM language model (lesson 8) generates the
caption word by word conditioned on it, and the whole thing is trained to
maximise log p(caption | image) (lesson 4) with the human word as the input
at every step ("teacher forcing"). Karpathy & Fei-Fei (2015) use the same
scheme with a plain RNN.

Here the encoder is deliberately simple - the 64x64 synthetic image averaged
down to 8x8 pixels, 192 numbers - so that the lesson is about the decoder.
Lesson 6 has the real encoder and lesson 13 the real data.
"""
import numpy

from captioning.data import Vocabulary, make_shapes_dataset
from captioning.data.images import normalize_images
from captioning.decoding import greedy_decode
from captioning.metrics import bleu
from captioning.models import ShowAndTell
from nn import backend
from nn.gradcheck import eval_numerical_gradient, rel_error, rel_errors
from nn.optim import Adam, adam, clip_grad_norm
from nn.pool import avg_pool_forward

TITLE = "The encoder-decoder (Show and Tell): overfit a small batch, caption, then a bare training loop"
SECONDS = 8


def tiny_features(split):
    """(N, 192) image vectors: each 64x64 image averaged over 8x8 blocks (a stand-in encoder)."""
    images = normalize_images(split.images)                                 # (N, 3, 64, 64) in [0, 1]
    pooled, _ = avg_pool_forward(images, {"pool_height": 8, "pool_width": 8, "stride": 8})
    return pooled.reshape(len(split), -1)


def encode_captions(vocab, token_lists):
    """(N, T+1) word ids: <START> w1 .. wn <END>, padded with <NULL>."""
    encoded = [vocab.encode(tokens) for tokens in token_lists]
    ids = numpy.zeros((len(encoded), max(map(len, encoded))), dtype=numpy.int64)
    for row, caption in enumerate(encoded):
        ids[row, :len(caption)] = caption
    return backend.asarray(ids)


def step_1_data(ctx):
    """A small batch: 50 synthetic images, one caption each.

    The vocabulary comes from these captions; each caption becomes
    <START> w1 ... wn <END> padded with <NULL> (lesson 7).
    """
    ctx.train = make_shapes_dataset(50, seed=1, name="train")
    ctx.unseen = make_shapes_dataset(20, seed=2, name="test")
    first_captions = [tokens[0] for tokens in ctx.train.tokens]
    ctx.vocab = Vocabulary.build(first_captions, min_count=1)
    ctx.features = tiny_features(ctx.train)
    ctx.captions = encode_captions(ctx.vocab, first_captions)
    return {"features": ctx.features.shape, "captions (ids)": ctx.captions.shape,
            "vocabulary size": len(ctx.vocab), "caption 0": ctx.train.captions[0][0]}


def step_2_the_model(ctx):
    """The model: image vector -> initial LSTM state; words -> LSTM -> word scores.

        h0     = feature @ W_init + b_init          the image sets the starting state
        x_t    = W_embed[word_t]                    the previous (true) word
        h_t    = LSTM(x_t, h_(t-1))
        scores = h_t @ W_vocab + b_vocab            one score per vocabulary word
    The paper feeds the image as the LSTM's first input instead of its state;
    both condition every word on the image. The model's forward pass, which
    `loss` calls (printed below), is these lines with the layers of lessons 3-8.
    """
    ctx.show_source(ShowAndTell._forward)
    config = {"vocab_size": len(ctx.vocab), "feature_dim": ctx.features.shape[1],
              "wordvec_dim": 48, "hidden_dim": 96}
    ctx.model = ShowAndTell(config, seed=0)
    loss, _ = ctx.model.loss(ctx.features, ctx.captions)
    words = int((backend.to_numpy(ctx.captions[:, 1:]) != 0).sum())
    uniform = words / len(ctx.train) * numpy.log(len(ctx.vocab))     # -log(1/V) per word, per caption
    return {name: tuple(value.shape) for name, value in ctx.model.params.items()} | {
        "parameters": ctx.model.num_params(), "loss at start": loss,
        "loss of uniform guessing (log V per word)": float(uniform)}


# Below this |analytic| + |numeric|, a gradient entry's relative error measures the finite
# difference's rounding, not the backward pass (step 3 derives it).
NOISE_FLOOR = 1e-4


def step_3_gradient_check(ctx):
    """The whole model's backward pass, checked numerically on a tiny float64 copy.

    `forward_backward` runs the chain forward (affine, embedding, LSTM,
    affine, softmax loss) and then every backward in reverse. One finite
    difference per parameter entry would be slow for the real sizes, so the
    check uses a tiny configuration. Some relative errors come out near
    1e-6, not 1e-9: the finite difference is only accurate to an absolute
    ~1e-10 (about eps * loss / h = 2.2e-16 * 16.5 / 1e-5 = 4e-10), and the
    relative error divides by |a| + |b|, which for some entries is itself
    near 1e-5. So entries below NOISE_FLOOR = 1e-4 are held to an absolute
    tolerance instead (rel_error's floor): their noise then counts at most
    4e-10 / 1e-4 = 4e-6 against the 1e-5 threshold, whatever rounding a
    backend does, while a backward that is wrong by 1e-4 still fails. The
    largest ABSOLUTE difference, and the size of the entry where the
    relative error peaks, show that this is rounding, not a bug (a bug gives
    relative errors near 1). The backward chain, printed below, is the
    forward's in reverse.
    """
    ctx.show_source(ShowAndTell._backward)
    config = {"vocab_size": len(ctx.vocab), "feature_dim": 6, "wordvec_dim": 4, "hidden_dim": 5}
    tiny = ShowAndTell(config, seed=1, dtype=numpy.float64)
    features = ctx.rng(0).standard_normal((2, 6))
    captions = ctx.captions[:2, :6]
    _, grads = tiny.loss(features, captions)
    errors, rows = {}, {}
    for name in ["W_init", "W_embed", "Wx", "Wh", "b", "W_vocab"]:
        numeric = backend.to_numpy(eval_numerical_gradient(lambda: tiny.loss(features, captions)[0],
                                                           tiny.params[name]))
        analytic = backend.to_numpy(grads[name])
        each = rel_errors(analytic, numeric, floor=NOISE_FLOOR)
        worst = numpy.unravel_index(each.argmax(), each.shape)
        errors[name] = rel_error(analytic, numeric, floor=NOISE_FLOOR)
        rows[f"d{name}: relative error, largest |difference|, |gradient| where worst"] = (
            f"{errors[name]:.1e}  {numpy.abs(analytic - numeric).max():.1e}  {abs(analytic[worst]):.1e}")
        ctx.check(numpy.abs(analytic - numeric).max() < 1e-8, f"d{name}: absolute differences are rounding")
    ctx.check(max(errors.values()) < 1e-5, f"model gradients must match: {errors}")
    return rows


def step_4_overfit(ctx):
    """Overfit the batch: Adam on all 50 captions until the loss is near zero.

    A model that cannot even memorise 50 captions has a bug; one that can is
    ready for real training. Each iteration: loss and gradients, then an Adam
    update of every parameter (the CS231n-style `adam(w, dw, config)`).
    """
    configs = {name: {"learning_rate": 2e-2} for name in ctx.model.params}
    losses = []
    for iteration in range(300):
        loss, grads = ctx.model.loss(ctx.features, ctx.captions)
        losses.append(loss)
        for name, value in ctx.model.params.items():
            ctx.model.params[name], configs[name] = adam(value, grads[name], configs[name])
    ctx.check(losses[-1] < 0.1, f"the batch is memorised (loss {losses[-1]:.3f})")
    return {"iterations": len(losses), "loss every 25 iterations": numpy.array(losses[::25]).round(3),
            "final loss": losses[-1]}


def decode(ctx, features):
    result = greedy_decode(ctx.model, features, ctx.vocab.start_id, ctx.vocab.end_id, max_length=20)
    return [ctx.vocab.decode(sequence) for sequence in result.sequences]


def step_5_caption_the_batch(ctx):
    """Caption the training images by greedy decoding (lesson 10).

    At test time there is no human caption to feed in: the model's own word
    goes back in at each step, starting from <START>, until it says <END>.
    """
    captions = decode(ctx, ctx.features)
    exact = sum(words == tokens[0] for words, tokens in zip(captions, ctx.train.tokens))
    ctx.check(exact >= 45, f"most training captions come back exactly ({exact} of 50)")
    return {"image 0, human": ctx.train.captions[0][0], "image 0, model": " ".join(captions[0]),
            "exactly right": f"{exact} of {len(captions)}"}


def step_6_caption_new_images(ctx):
    """Now images it has never seen: memorising is not learning.

    Fifty examples cannot cover the combinations of shapes, colours, sizes and
    places, so captions of new images are fluent but often wrong: BLEU on the
    training images is near perfect, on new ones far lower. Training on
    a thousand images (lesson 1, lesson 11) fixes much of that.
    """
    seen = bleu([c for c in ctx.train.captions], [" ".join(c) for c in decode(ctx, ctx.features)])
    new_captions = decode(ctx, tiny_features(ctx.unseen))
    unseen = bleu([c for c in ctx.unseen.captions], [" ".join(c) for c in new_captions])
    ctx.check(seen[3] > unseen[3], "training images are described better than new ones")
    for i in range(3):
        print(f"new image {i}: human: {ctx.unseen.captions[i][0]}\n             model: {' '.join(new_captions[i])}")
    return {f"BLEU-4 x100 on the {len(ctx.train.captions)} training images": round(100 * seen[3], 1),
            f"BLEU-4 x100 on {len(ctx.unseen.captions)} new images": round(100 * unseen[3], 1)}


def step_7_a_bare_training_loop(ctx):
    """A bare training loop on more data: minibatches, gradient clipping, an Adam step.

    1000 new images (one caption each) and a fresh model. Each epoch
    shuffles the captions and walks through them in minibatches of 50; for
    each: the loss and every gradient (`model.loss`, checked in step 3),
    `clip_grad_norm` (scales all gradients down together when their norm
    exceeds 5, lesson 8), one Adam step (`nn.optim.Adam`). After each epoch
    the loss on the 20 new images of step 6 shows what it learned that
    carries over to images it never saw.
    `captioning.training.Trainer` (lessons 1, 11, 13) is this loop plus what
    a real run needs: a trainable CNN, each image encoded once per batch, a
    learning-rate schedule, a stop on a diverged loss, dev BLEU after every
    epoch, checkpoints (last.npz, best.npz), resuming, and Ctrl-C.
    """
    train = make_shapes_dataset(1000, seed=3, name="train")
    first_captions = [tokens[0] for tokens in train.tokens]
    vocab = Vocabulary.build(first_captions, min_count=1)
    features, captions = tiny_features(train), encode_captions(vocab, first_captions)
    new_features = tiny_features(ctx.unseen)
    new_captions = encode_captions(vocab, [tokens[0] for tokens in ctx.unseen.tokens])
    model = ShowAndTell({"vocab_size": len(vocab), "feature_dim": features.shape[1], "wordvec_dim": 48,
                         "hidden_dim": 96}, seed=0)
    optimizer = Adam(model, lr=1e-2)             # reads the model's params and its latest grads
    order_gen, losses = numpy.random.default_rng(0), [model.loss(new_features, new_captions)[0]]
    for epoch in range(4):
        order = order_gen.permutation(len(captions))
        for start in range(0, len(order), 50):
            batch = backend.asarray(order[start:start + 50])
            loss, _ = model.loss(features[batch], captions[batch])      # fills model.grads
            clip_grad_norm(model, max_norm=5.0)
            optimizer.step()
        losses.append(model.loss(new_features, new_captions)[0])
        print(f"epoch {epoch + 1}: {optimizer.t} Adam steps, last minibatch loss {loss:.3f}, "
              f"loss on the 20 new images {losses[-1]:.3f}")
    ctx.check(losses[-1] < losses[0] / 2, "the loss on new images falls")
    return {"loss on the 20 new images, before and after each epoch": numpy.round(losses, 3)}


if __name__ == "__main__":  # python lessons/lesson_09_show_and_tell.py [--no-pause] [--quick]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
