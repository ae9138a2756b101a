"""Lesson 7: words as vectors - tokens, the vocabulary, embeddings.

A network computes with numbers, so a caption becomes a list of integer ids
and each id becomes a learned vector (an embedding). The steps: split text
into tokens the way Karpathy & Fei-Fei's NeuralTalk does, keep the frequent
words of the TRAINING captions as the vocabulary, map everything else to
<UNK>, add <START>/<END> so the model knows where a caption begins and
ends, pad to a common length with <NULL>.

Uses Flickr8k's captions when the data is found (--data, $FLICKR8K_DIR or
../shared/flickr8k), else the built-in synthetic shapes captions.
"""
from collections import Counter

import numpy

from captioning.data import Vocabulary, load_flickr8k, shapes_splits, tokenize
from nn import backend, recurrent
from nn.gradcheck import eval_numerical_gradient_array, rel_error
from nn.embedding import word_embedding_backward, word_embedding_forward

TITLE = "Words as vectors: tokenising captions, the vocabulary, embeddings"
SECONDS = 2

# `python run_lesson.py 7 --exercise`: write these yourself (graded by grade_<name> below and by the steps)
EXERCISES = ["word_embedding_forward", "word_embedding_backward"]
EXERCISE_IMPORTS = ["import numpy", "from nn import backend"]


def step_1_tokenize(ctx):
    """Tokenising: lowercase, delete punctuation, split on whitespace.

    The same rule as Karpathy's NeuralTalk preprocessing. Punctuation is
    deleted, not replaced: "dog's" becomes "dogs", "T-shirt" "tshirt".
    (coco-caption's scorer uses the PTB tokenizer instead, which keeps "'s"
    and "t-shirt" as tokens, so scores can differ slightly from ones
    computed with it.)
    """
    examples = ["A dog's ball, bright RED.", "Two children play in a T-shirt   and  shorts !"]
    tokens = [tokenize(caption) for caption in examples]
    ctx.check(tokens[0] == ["a", "dogs", "ball", "bright", "red"], "tokenize follows the convention")
    return {repr(caption): tokens_ for caption, tokens_ in zip(examples, tokens)}


def step_2_load_captions(ctx):
    """The captions of a data set: Flickr8k if it is here, else synthetic shapes.

    Flickr8k has 5 captions written by different people for each photo, in
    the official 6000 / 1000 / 1000 train / dev / test split.
    """
    data = None
    if ctx.data is not None and ctx.data.is_dir():
        try:
            data = load_flickr8k(ctx.data)
        except FileNotFoundError as exc:
            print(f"{ctx.data} is not usable as Flickr8k ({exc}); using the synthetic shapes.")
    if data is not None:
        ctx.splits, ctx.source = data.splits, f"Flickr8k at {ctx.data}"
    else:
        ctx.splits, ctx.source = shapes_splits(n_train=2000, n_val=200, n_test=200), "synthetic shapes"
    train = ctx.splits["train"]
    lengths = [len(t) for t in train.all_tokens()]
    return {"source": ctx.source, "train images": len(train), "train captions": train.num_captions,
            "first image's captions": "\n".join(train.captions[0]),
            "caption length (words): mean": float(numpy.mean(lengths)),
            "caption length: 95th percentile": float(numpy.percentile(lengths, 95)),
            "caption length: longest": max(lengths)}


def step_3_vocabulary(ctx):
    """The vocabulary: frequent TRAIN words only, with four special tokens first.

    Words seen fewer than min_count (5) times are too rare to learn and become
    <UNK>; counting only training captions keeps the test set unseen. The ids
    <NULL>=0 (padding), <START>=1, <END>=2, <UNK>=3 come first.
    """
    train_tokens = ctx.splits["train"].all_tokens()
    counts = Counter(word for tokens in train_tokens for word in tokens)
    ctx.vocab = Vocabulary.build(train_tokens, min_count=5)
    dev_tokens = [w for tokens in ctx.splits["dev"].all_tokens() for w in tokens]
    unknown = sum(w not in ctx.vocab for w in dev_tokens) / max(len(dev_tokens), 1)
    ctx.check(ctx.vocab.id_to_word[:4] == ["<NULL>", "<START>", "<END>", "<UNK>"], "specials first")
    return {"distinct train words": len(counts), "vocabulary size (min count 5, with specials)": len(ctx.vocab),
            "most frequent words": counts.most_common(8),
            "words seen once": sum(c == 1 for c in counts.values()),
            "dev words that become <UNK>": f"{100 * unknown:.2f} %"}


def step_4_encode_and_pad(ctx):
    """Encoding: <START> w1 ... wn <END> as ids, padded with <NULL> to one length.

    A mini-batch needs one array of shape (N, T), so shorter captions are
    padded with <NULL> = 0. For training the array is shifted by one: the
    decoder READS captions[:, :-1] (<START> w1 ... wn) and must PREDICT
    captions[:, 1:] (w1 ... wn <END>), the next word at every position
    (lessons 8-9). The loss mask is over the targets, captions[:, 1:] !=
    <NULL>: <START> is never a target, padding never counts, and each caption
    contributes its n words plus <END>. `decode` turns ids back into words
    and stops at <END> (`Vocabulary.encode`, printed below).
    """
    ctx.show_source(Vocabulary.encode)
    captions = [ctx.splits["train"].tokens[i][0] for i in range(3)]
    encoded = [ctx.vocab.encode(tokens, max_length=20) for tokens in captions]
    length = max(len(e) for e in encoded)
    batch = numpy.zeros((len(encoded), length), dtype=numpy.int64)
    for row, ids in enumerate(encoded):
        batch[row, :len(ids)] = ids
    inputs, targets = batch[:, :-1], batch[:, 1:]
    mask = targets != ctx.vocab.null_id                   # the loss mask: over the targets
    ctx.batch = batch
    ctx.check(ctx.vocab.decode(batch[0]) == [w if w in ctx.vocab else "<UNK>" for w in captions[0][:20]],
              "decode(encode(caption)) gives the caption back (rare words as <UNK>)")
    ctx.check(list(mask.sum(axis=1)) == [len(e) - 1 for e in encoded], "each caption's words + <END> count")
    longest = int(mask.sum(axis=1).argmax())              # a row without padding shows the shift best
    words = [ctx.vocab.id_to_word[i] for i in batch[longest]]
    return {"captions": [" ".join(c) for c in captions], "ids (N, T)": batch,
            f"row {longest} read (inputs)": " ".join(words[:-1]),
            f"row {longest} to predict (targets)": " ".join(words[1:]),
            "loss mask over the targets": mask.astype(int), "decoded row 0": " ".join(ctx.vocab.decode(batch[0]))}


def step_5_embeddings(ctx):
    """Embeddings: a table W (V, E); word id k is represented by row k.

    Looking up row k is the same as multiplying a one-hot vector by W, but
    costs nothing. The rows start random and are learned with the rest of
    the model, so words used alike end up with similar vectors. For ids
    x (N, T) the output is W[x], shape (N, T, E).
    """
    vocab_size, embed_dim = len(ctx.vocab), 8
    ctx.W = ctx.rng(0).standard_normal((vocab_size, embed_dim))
    x = backend.asarray(ctx.batch)
    vectors, _ = word_embedding_forward(x, ctx.W)
    one_hot = backend.xp().eye(vocab_size)[x]                 # (N, T, V)
    ctx.check(rel_error(vectors, one_hot @ ctx.W) < 1e-12, "lookup = one-hot @ W")
    return {"W": ctx.W.shape, "ids": x.shape, "vectors": vectors.shape,
            "parameters in W": int(ctx.W.size)}


def step_6_embedding_gradient(ctx):
    """Its backward pass: each row of dW collects the gradients of every use of that word.

    A word that appears several times in the batch (e.g. "a", or <NULL>)
    receives the SUM of their gradients: a scatter-add (`np.add.at`), not a
    plain assignment, which would keep only one of them. Checked numerically
    on a small table.
    """
    gen = ctx.rng(1)
    x = backend.asarray(numpy.array([[0, 3, 1], [3, 3, 2]]))  # word 3 appears three times
    W = gen.standard_normal((5, 4))
    out, cache = word_embedding_forward(x, W)
    dout = gen.standard_normal(out.shape)
    dW = word_embedding_backward(dout, cache)
    numeric = eval_numerical_gradient_array(lambda v: word_embedding_forward(x, v)[0], W, dout)
    error = rel_error(dW, numeric)
    ctx.check(error < 1e-7, "embedding gradient must match")
    expected_row3 = dout[0, 1] + dout[1, 0] + dout[1, 1]
    ctx.check(rel_error(dW[3], expected_row3) < 1e-12, "row 3 is the sum of its three uses")
    return {"dW row of word 3": backend.to_numpy(dW[3]).round(4), "relative error dW": error,
            "rows of words not used (4)": backend.to_numpy(dW[4])}


def embedding_case(gen):
    """Word ids with repeats (word 2 three times) and a float64 table drawn from gen, for grading."""
    return backend.asarray(numpy.array([[2, 0, 2], [1, 2, 4]])), gen.standard_normal((6, 3))


def grade_word_embedding_forward(ctx, mine, reference):
    """Your vectors against the library's."""
    x, W = embedding_case(ctx.rng(30))
    error = rel_error(mine.word_embedding_forward(x, W)[0], reference(x, W)[0])
    ctx.check(error < 1e-12, f"out differs from the reference: relative error {error:.1e}")
    return "out matches the reference"


def grade_word_embedding_backward(ctx, mine, reference):
    """Your dW (from the cache of YOUR forward) against finite differences; word 2 is used three times."""
    x, W = embedding_case(ctx.rng(30))
    dout = ctx.rng(31).standard_normal((2, 3, 3))
    try:
        cache = mine.word_embedding_forward(x, W)[1]
    except NotImplementedError:
        raise NotImplementedError("it needs your word_embedding_forward (its cache) first") from None
    numeric = eval_numerical_gradient_array(lambda v: recurrent.word_embedding_forward(x, v)[0], W, dout)
    error = rel_error(mine.word_embedding_backward(dout, cache), numeric)
    ctx.check(error < 1e-7, f"dW differs from finite differences: relative error {error:.1e} "
                            "(a word used several times must get the SUM of their gradients)")
    return f"dW matches finite differences (relative error {error:.1e})"


if __name__ == "__main__":  # python lessons/lesson_07_words.py [--no-pause] [--data DIR]
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    import run_lesson
    sys.exit(run_lesson.main([__file__] + sys.argv[1:]))
