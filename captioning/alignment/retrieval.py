"""Image-sentence retrieval with the alignment model: score matrices, Recall@K, median rank.

The protocol of Karpathy & Fei-Fei (2015), Table 1: on N test images and their
5N sentences,
- image annotation (image -> sentences): rank all 5N sentences by score for an
  image; the image's rank is the BEST rank of its own sentences;
- image search (sentence -> images): rank the N images for a sentence; the rank
  of its own image.
R@K is the percentage of queries whose rank is <= K; Med r the median rank.

Ties. A rank is 1 + the number of wrong items scoring STRICTLY higher, in both
directions: a tie does not count against the query. Ties are real on the shapes
set, whose test captions are 2500 sentences but only about 1700 distinct ones
("a red circle" describes many images). For them to be exact ties, each DISTINCT
sentence is encoded and scored once and its column copied to every sentence
with the same words (`sentence_scores`): scored apart, in other batches and at
other offsets, identical sentences differ in the last bits (about 1e-6 in
float32), and the ranking between them was arbitrary. That cost a shapes
aligner 11 points of annotation R@1 (37.0 against 48.4 with exact ties).
"""
import numpy

from nn import backend

__all__ = ["encode_regions", "encode_images", "encode_words", "encode_sentence_vectors", "global_scores",
           "distinct_sentences", "sentence_scores", "score_matrix", "ranks",
           "recall_metrics", "PAPER_FLICKR8K"]

# Karpathy & Fei-Fei (2015), Table 1, Flickr8k, "Our model: BRNN".
PAPER_FLICKR8K = {"annotation": {"R@1": 16.5, "R@5": 40.6, "R@10": 54.2, "median_rank": 7.6},
                  "search": {"R@1": 11.8, "R@5": 32.1, "R@10": 44.7, "median_rank": 12.4}}


def encode_regions(model, encoder, inputs, batch_size=100):
    """Region vectors of every image: (N, R, h) on the backend (encoder in eval mode)."""
    return encode_images(model, encoder, inputs, batch_size)[0]


def encode_images(model, encoder, inputs, batch_size=100):
    """(regions (N, R, h), image vectors (N, h) of the global term or None without it),
    on the backend (encoder in eval mode)."""
    encoder.eval()
    regions, whole = [], []
    for start in range(0, len(inputs), batch_size):
        grid = encoder.encode(inputs[start:start + batch_size], "grid", model.dtype)
        regions.append(model.regions_forward(grid)[0])
        if model.config["global_weight"]:
            whole.append(model.image_vector_forward(grid)[0])
    encoder.train()
    xp = backend.xp()
    return xp.concatenate(regions, axis=0), (xp.concatenate(whole, axis=0) if whole else None)


def encode_words(model, sentences, batch_size=500):
    """Word vectors of every sentence, the sentences one after another: (W, h), and the
    (P + 1,) offsets: sentence p owns rows offsets[p]:offsets[p + 1]."""
    xp = backend.xp()
    parts = []
    for start in range(0, len(sentences), batch_size):
        rows = numpy.arange(start, min(start + batch_size, len(sentences)))
        words, mask = sentences.batch(rows)
        s = model.words_forward(xp.asarray(words), backend.asarray(mask, dtype=model.dtype))[0]
        parts.append(s[xp.asarray(mask > 0)])           # (real words of the batch, h), in order
    offsets = numpy.concatenate([[0], numpy.cumsum(sentences.lengths)])
    return xp.concatenate(parts, axis=0), offsets


def encode_sentence_vectors(model, sentences, batch_size=500):
    """The global term's sentence vectors q of every sentence: (P, h) on the backend."""
    xp = backend.xp()
    parts = []
    for start in range(0, len(sentences), batch_size):
        words, mask = sentences.batch(numpy.arange(start, min(start + batch_size, len(sentences))))
        parts.append(model.sentences_forward(xp.asarray(words), backend.asarray(mask, dtype=model.dtype))[1])
    return xp.concatenate(parts, axis=0)


def global_scores(model, image_vectors, sentences):
    """g u_k . q_l (N, P) NumPy float64, the global term of every image with every sentence;
    zeros when the model has none."""
    g = float(model.config["global_weight"])
    if not g:
        return numpy.zeros((0 if image_vectors is None else len(image_vectors), len(sentences)))
    if image_vectors is None:
        raise ValueError("this aligner has a global term: pass the image vectors of encode_images")
    q = encode_sentence_vectors(model, sentences)
    return g * backend.to_numpy(image_vectors @ q.T).astype(numpy.float64)


def distinct_sentences(sentences):
    """The distinct word sequences of `sentences` (captioning.alignment.data.Sentences).

    Returns (distinct, index): `distinct` a Sentences of the D distinct ones in the order
    they first occur (its `image` is the image of that first occurrence), `index` (P,)
    int64: sentence p has the words of distinct row index[p].
    """
    from .data import Sentences
    keys = numpy.concatenate([sentences.lengths[:, None], sentences.words], axis=1)
    _, first, index = numpy.unique(keys, axis=0, return_index=True, return_inverse=True)
    order = numpy.argsort(first)                       # distinct rows in order of first occurrence
    first, rank = first[order], numpy.empty_like(order)
    rank[order] = numpy.arange(len(order))
    distinct = Sentences(sentences.words[first], sentences.lengths[first], sentences.image[first])
    return distinct, rank[index.reshape(-1)].astype(numpy.int64)


def sentence_scores(model, regions, sentences, chunk=20, image_vectors=None):
    """S (N, P) NumPy float64 of the images' `regions` (N, R, h) against every sentence,
    each DISTINCT sentence encoded and scored once, so that identical sentences of
    different images tie exactly (see the module docstring). A model with the global
    term needs the `image_vectors` (N, h) of encode_images too."""
    distinct, index = distinct_sentences(sentences)
    words, offsets = encode_words(model, distinct)
    S = score_matrix(regions, words, offsets, chunk=chunk, **model.score_options())
    if model.config["global_weight"]:
        S += global_scores(model, image_vectors, distinct)
    return S[:, index]


def score_matrix(regions, word_vectors, offsets, chunk=20, clip=False, average=False):
    """S (N, P) NumPy float64: S[k, p] = sum over the words of sentence p of max_i v_ki . s_t
    (clip / average as in nn.ranking.fragment_score_forward: pass model.score_options()).

    Chunks of `chunk` images keep the (chunk * R, W) table of dot products small.
    """
    xp = backend.get_array_module(regions)
    N, R, H = regions.shape
    ends = xp.asarray(offsets[1:])
    starts = xp.asarray(offsets[:-1])
    out = numpy.empty((N, len(offsets) - 1))
    for k in range(0, N, chunk):
        v = regions[k:k + chunk]
        best = (v.reshape(-1, H) @ word_vectors.T).reshape(len(v), R, -1).max(axis=1)   # (n, W)
        if clip:
            best = xp.maximum(best, 0)
        total = xp.concatenate([xp.zeros((len(v), 1), dtype=xp.float64),
                                xp.cumsum(best, axis=1, dtype=xp.float64)], axis=1)
        out[k:k + len(v)] = backend.to_numpy(total[:, ends] - total[:, starts])
    if average:
        out /= numpy.maximum(numpy.diff(offsets), 1)[None, :]
    return out


def ranks(S, sentence_image):
    """Ranks of both directions from S (N images, P sentences) and each sentence's image.

    Returns: annotation (N,) the best rank of an image's own sentences among all P,
    search (P,) the rank of each sentence's own image among all N. 1 = first.
    Both count only wrong items scoring strictly higher: a wrong sentence (or image)
    that ties the true one does not push it down.
    """
    S = numpy.asarray(S)
    sentence_image = numpy.asarray(sentence_image)
    own = S[sentence_image, numpy.arange(S.shape[1])]                  # (P,) score of the true pair
    search = 1 + (S > own[None, :]).sum(axis=0)
    annotation = numpy.full(S.shape[0], S.shape[1] + 1)
    for p, image in enumerate(sentence_image):
        wrong = numpy.delete(S[image], numpy.flatnonzero(sentence_image == image))
        annotation[image] = min(annotation[image], 1 + int((wrong > own[p]).sum()))
    return annotation, search


def recall_metrics(S, sentence_image, ks=(1, 5, 10)):
    """{"annotation": {...}, "search": {...}} with R@K in percent and median_rank."""
    result = {}
    for name, r in zip(("annotation", "search"), ranks(S, sentence_image)):
        result[name] = {f"R@{k}": float(100.0 * (r <= k).mean()) for k in ks}
        result[name]["median_rank"] = float(numpy.median(r))
    return result


def recall_sum(metrics):
    """R@1 + R@5 + R@10 of both directions: one number for model selection."""
    return sum(v for d in metrics.values() for k, v in d.items() if k.startswith("R@"))
