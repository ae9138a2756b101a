"""Caption metrics: corpus BLEU-1..4 and CIDEr-D, in plain Python and NumPy.

Both follow the reference implementations that published captioning results
use, so our numbers can be compared with papers:

BLEU (Papineni et al. 2002) as in coco-caption's `bleu_scorer.py` with its
'closest' option and as in `nltk.translate.bleu_score.corpus_bleu`:
  - modified n-gram precision: each hypothesis n-gram count is clipped by the
    largest count of that n-gram in any SINGLE reference of the image;
  - clipped matches and n-gram totals are summed over the whole corpus before
    dividing (corpus BLEU, not a mean of sentence BLEUs);
  - BLEU-n = BP * (p_1 * ... * p_n) ** (1/n)  (uniform weights, no smoothing);
  - effective reference length per image: the reference length closest to the
    hypothesis length, ties going to the SHORTER reference (both coco-caption's
    `min((abs(l - testlen), l))` and nltk's `closest_ref_length` do this);
  - corpus brevity penalty BP = 1 if c > r else exp(1 - r / c), with c and r the
    summed hypothesis and effective reference lengths (BP = 0 when c = 0).
  Where the two reference codes differ, we do this (tests pin each point):
  - n-gram totals: a hypothesis with w words has max(0, w - n + 1) n-grams of
    order n (coco-caption). nltk counts max(1, ...) per sentence, so it differs
    only for hypotheses shorter than n words (rare for captions); on corpora
    whose hypotheses all have >= max_n words we equal nltk to 1e-12.
  - zero clipped matches for some order: BLEU is exactly 0 (nltk returns 0
    or float_info.min**w); coco-caption's fudge constants (1e-15 / 1e-9) give
    a tiny positive number instead, and they move every other score by < 1e-9.

CIDEr-D (Vedantam et al. 2015) as in coco-caption's `cider_scorer.py` (which
is CIDEr-D: clipping and a length penalty) with document frequencies from the
reference corpus:
  - g_k(s) = tf(k in s) * (log(N) - log(max(1, df_k))): raw n-gram counts times
    IDF, N = number of images, df_k = number of images whose references contain
    n-gram k at least once;
  - per order n = 1..4 and per reference: sum_k min(g_k(hyp), g_k(ref)) *
    g_k(ref) / (|g(hyp)| |g(ref)|) (0 when a norm is 0), times the Gaussian
    length penalty exp(-delta**2 / (2 sigma**2)), sigma = 6;
  - per image: mean over n, mean over references, times 10; corpus: mean over
    images. coco-caption measures delta as the difference in the number of
    BIGRAMS (its `length` counter sits on n-gram index 1), which equals the
    difference in words unless a caption is empty (0 words, 0 bigrams); we
    match it. So with max_n = 1 there is no length penalty at all.
  - With a single image log(N) = 0, so every weight and the score is 0.

ROUGE-L (Lin 2004) as in coco-caption's `rouge.py`: for each reference the
longest common subsequence (LCS) of words; precision P = max over references
of LCS / hypothesis length, recall R = max over references of LCS / reference
length (each maximised on its own), score = (1 + b^2) P R / (R + b^2 P) with
b = 1.2 (0 when P or R is 0); corpus: mean over images.

Checked once against pycocoevalcap 1.2 (the pip build of coco-caption) on
random corpora with 1..12-word captions: CIDEr-D per image equal to 1e-15,
BLEU-1..3 to 1e-11 (its fudge constants), BLEU-4 differing only where the
corpus had no 4-gram match (ours 0, theirs ~1e-5).

Tokens: lower-cased, punctuation characters deleted from each token (as in
Karpathy's neuraltalk preprocessing), tokens that become empty dropped, and
the markers <START>, <END>, <NULL> removed. Captions may be given as token
lists or as strings (split on white space, then the same rule). References are
the raw human captions (all of them, never mapped to <UNK>).
"""
import math
import string
from collections import Counter

import numpy

__all__ = [
    "SPECIAL_TOKENS", "normalize_tokens", "ngram_counts", "closest_reference_length",
    "bleu", "cider_d", "cider_d_per_image", "CiderD", "longest_common_subsequence", "rouge_l", "rouge_l_per_image",
]

SPECIAL_TOKENS = frozenset({"<start>", "<end>", "<null>"})
_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


def normalize_tokens(caption):
    """One caption (a string or a sequence of token strings) -> list of tokens.

    Lower-cases, drops <START>/<END>/<NULL> (any case), deletes punctuation
    characters inside tokens ("t-shirt" -> "tshirt", "." -> dropped).
    """
    if isinstance(caption, str):
        tokens = caption.split()
    elif isinstance(caption, (list, tuple)):
        tokens = []
        for token in caption:
            if not isinstance(token, str):
                raise TypeError(f"metrics: caption tokens must be strings, got {type(token).__name__} "
                                f"({token!r}); map word ids to words first")
            tokens.extend(token.split())
    else:
        raise TypeError(f"metrics: a caption must be a string or a list of token strings, "
                        f"got {type(caption).__name__}")
    words = []
    for token in tokens:
        token = token.lower()
        if token in SPECIAL_TOKENS:
            continue
        token = token.translate(_PUNCTUATION_TABLE)
        if token:
            words.append(token)
    return words


def ngram_counts(tokens, max_n):
    """Counter of every n-gram (as a tuple) of orders 1..max_n in `tokens`."""
    counts = Counter()
    for n in range(1, max_n + 1):
        for start in range(len(tokens) - n + 1):
            counts[tuple(tokens[start:start + n])] += 1
    return counts


def closest_reference_length(reference_lengths, hypothesis_length):
    """The reference length closest to the hypothesis length; ties -> shorter."""
    return min(reference_lengths, key=lambda length: (abs(length - hypothesis_length), length))


def _check_corpus(references, hypotheses, op):
    """Normalise the corpus: list (per image) of lists of token lists, list of token lists."""
    if isinstance(references, (str, bytes)) or isinstance(hypotheses, (str, bytes)):
        raise TypeError(f"{op}: references and hypotheses must be lists with one entry per image, "
                        "not a single string")
    references, hypotheses = list(references), list(hypotheses)
    if len(references) != len(hypotheses):
        raise ValueError(f"{op}: {len(references)} reference sets but {len(hypotheses)} hypotheses; "
                         "expected one of each per image")
    if not hypotheses:
        raise ValueError(f"{op}: empty corpus (no images)")
    reference_tokens = []
    for index, image_references in enumerate(references):
        if isinstance(image_references, str) or len(image_references) == 0:
            raise ValueError(f"{op}: image {index}: expected a non-empty list of reference captions, "
                             f"got {image_references!r}")
        reference_tokens.append([normalize_tokens(ref) for ref in image_references])
    hypothesis_tokens = [normalize_tokens(hyp) for hyp in hypotheses]
    return reference_tokens, hypothesis_tokens


def bleu(references, hypotheses, max_n=4):
    """Corpus BLEU-1..BLEU-max_n, as coco-caption ('closest') and nltk compute it.

    Inputs:
    - references: list (one per image) of lists of reference captions; each
      caption a string or a list of token strings.
    - hypotheses: list (one per image) of captions (string or token list).
    - max_n: highest n-gram order.
    Returns: list of max_n floats [BLEU-1, ..., BLEU-max_n], each in [0, 1].
    """
    if not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"bleu: max_n must be a positive int, got {max_n!r}")
    reference_tokens, hypothesis_tokens = _check_corpus(references, hypotheses, "bleu")
    matches = numpy.zeros(max_n)        # clipped n-gram matches, summed over the corpus
    totals = numpy.zeros(max_n)         # hypothesis n-grams, summed over the corpus
    hypothesis_length = reference_length = 0
    for refs, hyp in zip(reference_tokens, hypothesis_tokens):
        # The clip for an n-gram is its largest count in any one reference.
        max_reference_counts = Counter()
        for ref in refs:
            max_reference_counts |= ngram_counts(ref, max_n)   # |= keeps the max count
        for gram, count in ngram_counts(hyp, max_n).items():
            matches[len(gram) - 1] += min(count, max_reference_counts[gram])
        totals += [max(0, len(hyp) - n + 1) for n in range(1, max_n + 1)]
        hypothesis_length += len(hyp)
        reference_length += closest_reference_length([len(ref) for ref in refs], len(hyp))

    if hypothesis_length == 0:
        brevity_penalty = 0.0
    elif hypothesis_length > reference_length:
        brevity_penalty = 1.0
    else:
        brevity_penalty = math.exp(1.0 - reference_length / hypothesis_length)

    scores = []
    log_precision_sum = 0.0
    for n in range(max_n):
        if matches[n] == 0:
            # log(0): this order and every higher one (geometric mean) are 0.
            scores.extend([0.0] * (max_n - n))
            break
        log_precision_sum += math.log(matches[n] / totals[n])
        scores.append(brevity_penalty * math.exp(log_precision_sum / (n + 1)))
    return scores


def _tfidf_vectors(counts, document_frequency, log_num_images, max_n):
    """One caption's CIDEr vectors.

    Inputs: counts (Counter of n-gram tuples), document_frequency (Counter),
    log_num_images (float), max_n (int).
    Returns: (vectors, norms, length): vectors a list of max_n dicts n-gram ->
    tf * idf weight, norms (max_n,) their Euclidean norms, length the number
    of bigrams (coco-caption's length for the Gaussian penalty).
    """
    vectors = [dict() for _ in range(max_n)]
    norms = numpy.zeros(max_n)
    for gram, term_frequency in counts.items():
        idf = log_num_images - math.log(max(1.0, document_frequency[gram]))
        weight = term_frequency * idf
        vectors[len(gram) - 1][gram] = weight
        norms[len(gram) - 1] += weight * weight
    length = sum(count for gram, count in counts.items() if len(gram) == 2)
    return vectors, numpy.sqrt(norms), length


def _clipped_similarity(hyp, ref, sigma, max_n):
    """Per-order CIDEr-D similarity of two captions' (vectors, norms, length)."""
    hyp_vectors, hyp_norms, hyp_length = hyp
    ref_vectors, ref_norms, ref_length = ref
    similarity = numpy.zeros(max_n)
    for n in range(max_n):
        # Clipping: a hypothesis cannot gain by repeating an n-gram more often
        # than the reference has it (the "-D" in CIDEr-D, with the penalty below).
        dot = sum(min(weight, ref_vectors[n].get(gram, 0.0)) * ref_vectors[n].get(gram, 0.0)
                  for gram, weight in hyp_vectors[n].items())
        if hyp_norms[n] != 0 and ref_norms[n] != 0:
            similarity[n] = dot / (hyp_norms[n] * ref_norms[n])
    delta = float(hyp_length - ref_length)
    return similarity * math.exp(-delta * delta / (2.0 * sigma * sigma))


class CiderD:
    """CIDEr-D with document frequencies fixed once, from a reference corpus.

    `cider_d_per_image` takes the document frequencies from the references it
    scores; self-critical training instead scores every sampled caption
    against its image's references with the frequencies of the whole
    TRAINING corpus, computed once here (and each image's reference vectors
    once, when first needed).

    Inputs:
    - references: list (one per image) of lists of reference captions
      (strings or token lists): the corpus of the document frequencies and
      the references `scores` compares with (by image index).
    - sigma, max_n: as in `cider_d_per_image`.
    """

    def __init__(self, references, sigma=6.0, max_n=4):
        if not isinstance(max_n, int) or max_n < 1:
            raise ValueError(f"cider_d: max_n must be a positive int, got {max_n!r}")
        if not sigma > 0:
            raise ValueError(f"cider_d: sigma must be positive, got {sigma!r}")
        self.sigma, self.max_n = sigma, max_n
        reference_tokens, _ = _check_corpus(references, [[]] * len(references), "cider_d")
        self._reference_counts = [[ngram_counts(ref, max_n) for ref in refs] for refs in reference_tokens]
        # Document frequency: in how many images' reference sets each n-gram occurs.
        self.document_frequency = Counter()
        for counts_of_image in self._reference_counts:
            self.document_frequency.update(set().union(*counts_of_image))
        self.log_num_images = math.log(float(len(self._reference_counts)))
        self._reference_vectors = {}

    def __len__(self):
        return len(self._reference_counts)

    def _vectors_of_image(self, index):
        if index not in self._reference_vectors:
            self._reference_vectors[index] = [
                _tfidf_vectors(ref, self.document_frequency, self.log_num_images, self.max_n)
                for ref in self._reference_counts[index]]
        return self._reference_vectors[index]

    def scores(self, image_indices, hypotheses):
        """CIDEr-D of each hypothesis against the references of its image.

        Inputs:
        - image_indices: sequence (M,) of ints, indices into the reference corpus
          (an image may occur many times, e.g. once per sampled caption)
        - hypotheses: list (M,) of captions (strings or token lists)
        Returns: numpy array (M,) of float64 scores (x10 scale).
        """
        image_indices = [int(i) for i in image_indices]
        if len(image_indices) != len(hypotheses):
            raise ValueError(f"cider_d: {len(image_indices)} image indices but {len(hypotheses)} hypotheses")
        if any(not 0 <= i < len(self) for i in image_indices):
            raise ValueError(f"cider_d: image indices must lie in [0, {len(self)}), got "
                             f"{min(image_indices)}..{max(image_indices)}")
        scores = numpy.zeros(len(hypotheses))
        for k, (index, hyp) in enumerate(zip(image_indices, hypotheses)):
            hyp_vector = _tfidf_vectors(ngram_counts(normalize_tokens(hyp), self.max_n), self.document_frequency,
                                        self.log_num_images, self.max_n)
            refs = self._vectors_of_image(index)
            total = numpy.zeros(self.max_n)
            for ref_vector in refs:
                total += _clipped_similarity(hyp_vector, ref_vector, self.sigma, self.max_n)
            scores[k] = 10.0 * total.mean() / len(refs)
        return scores


def cider_d_per_image(references, hypotheses, sigma=6.0, max_n=4):
    """CIDEr-D score of each image (coco-caption's definition, corpus IDF).

    Inputs:
    - references: list (one per image) of lists of reference captions
      (strings or token lists); they also define the document frequencies.
    - hypotheses: list (one per image) of captions.
    - sigma: standard deviation of the Gaussian length penalty.
    - max_n: highest n-gram order (the length penalty counts bigrams, as
      coco-caption does, so it needs max_n >= 2).
    Returns: numpy array (num_images,) of float64 scores (x10 scale; a caption
    equal to every reference scores about 10 on a large corpus).
    """
    _check_corpus(references, hypotheses, "cider_d")
    return CiderD(references, sigma=sigma, max_n=max_n).scores(range(len(hypotheses)), hypotheses)


def cider_d(references, hypotheses, sigma=6.0, max_n=4):
    """Corpus CIDEr-D: the mean of `cider_d_per_image` (same inputs); a float."""
    return float(cider_d_per_image(references, hypotheses, sigma=sigma, max_n=max_n).mean())


def longest_common_subsequence(a, b):
    """Length of the longest common subsequence of token lists a and b (dynamic programming).

    row[j] holds the LCS length of the prefix of `a` seen so far and b[:j].
    """
    row = [0] * (len(b) + 1)
    for token in a:
        diagonal = 0                    # LCS of the previous a-prefix and b[:j - 1]
        for j, other in enumerate(b, start=1):
            above = row[j]
            row[j] = diagonal + 1 if token == other else max(row[j], row[j - 1])
            diagonal = above
    return row[len(b)]


def rouge_l_per_image(references, hypotheses, beta=1.2):
    """ROUGE-L of each image (coco-caption's definition, see the module docstring).

    Inputs:
    - references: list (one per image) of lists of reference captions (strings or token lists)
    - hypotheses: list (one per image) of captions
    - beta: weight of recall against precision
    Returns: numpy array (num_images,) of float64 scores in [0, 1].
    """
    reference_tokens, hypothesis_tokens = _check_corpus(references, hypotheses, "rouge_l")
    scores = numpy.zeros(len(hypothesis_tokens))
    for index, (hyp, refs) in enumerate(zip(hypothesis_tokens, reference_tokens)):
        if not hyp:
            continue
        common = [longest_common_subsequence(ref, hyp) for ref in refs]
        precision = max(c / len(hyp) for c in common)
        recall = max(c / len(ref) for c, ref in zip(common, refs) if ref) if any(refs) else 0.0
        if precision > 0 and recall > 0:
            scores[index] = (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
    return scores


def rouge_l(references, hypotheses, beta=1.2):
    """Corpus ROUGE-L: the mean of `rouge_l_per_image` (same inputs); a float."""
    return float(rouge_l_per_image(references, hypotheses, beta=beta).mean())
