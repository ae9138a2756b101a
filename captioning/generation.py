"""Captioning a whole split and scoring the captions (validation, `evaluate`, the samples of `train`)."""
from .decoding import DecodeResult, beam_search, greedy_decode
from .metrics import bleu, cider_d, rouge_l

__all__ = ["BAD_ENDINGS", "bad_ending_ids", "generate_captions", "evaluate_captions"]

# Words an English caption should not end on (articles, prepositions, "is"/"are"/"am"):
# self-critical training learns to stop right after them ("a woman is sitting in front of a").
# The list of self-critical.pytorch's `remove_bad_endings`.
BAD_ENDINGS = ("a", "an", "the", "in", "for", "at", "of", "with", "before", "after", "on", "upon",
               "near", "to", "is", "are", "am")


def bad_ending_ids(vocabulary, words=BAD_ENDINGS):
    """The ids of `words` in `vocabulary` (a captioning.data.text.Vocabulary), in the order of
    `words`; words the vocabulary lacks are left out. For the decoders' bad_ending_ids."""
    return tuple(vocabulary.word_to_id[word] for word in words if word in vocabulary)


def generate_captions(model, encoder, split, vocabulary, beam=1, max_length=20, length_alpha=0.0,
                      batch_size=100, no_repeat_ngram=0, block_bad_endings=False):
    """Caption every image of `split` (a CaptionSplit: uses .inputs), batch_size images at a time.

    beam 1 decodes greedily, larger beams by beam search (captioning.decoding);
    no_repeat_ngram n > 0 forbids repeating any n-gram within a caption (0: off);
    block_bad_endings True forbids ending a caption on a word of BAD_ENDINGS.
    Returns (captions, result): captions = per image, a list of words; result
    = the captioning.decoding.DecodeResult (sequences, scores, attention).
    """
    model.eval()
    encoder.eval()
    bad_ids = bad_ending_ids(vocabulary) if block_bad_endings else ()
    results = []
    for start in range(0, len(split), batch_size):
        features = encoder.encode(split.inputs[start:start + batch_size], model.feature_kind, model.dtype)
        if beam > 1:
            results.append(beam_search(model, features, model.start_id, model.end_id, beam_size=beam,
                                       max_length=max_length, length_alpha=length_alpha,
                                       no_repeat_ngram=no_repeat_ngram, bad_ending_ids=bad_ids))
        else:
            results.append(greedy_decode(model, features, model.start_id, model.end_id,
                                         max_length=max_length, no_repeat_ngram=no_repeat_ngram,
                                         bad_ending_ids=bad_ids))
    merged = DecodeResult.concat(results)
    return [vocabulary.decode(seq) for seq in merged.sequences], merged


def evaluate_captions(references, captions, with_cider=True):
    """{"bleu": [BLEU-1..4], "cider": CIDEr-D, "rouge_l": ROUGE-L} of generated captions (fractions,
    not x100); BLEU only when with_cider is False (validation during training)."""
    scores = {"bleu": [float(b) for b in bleu(references, captions)]}
    if with_cider:
        scores["cider"] = float(cider_d(references, captions))
        scores["rouge_l"] = rouge_l(references, captions)
    return scores
