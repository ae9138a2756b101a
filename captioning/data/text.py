"""Captions as words and words as integers: tokenization and the vocabulary.

Tokenization follows the convention of Karpathy's NeuralTalk preprocessing:
lowercase, delete punctuation characters, split on whitespace. "A dog's ball,
red." -> ["a", "dogs", "ball", "red"]. (coco-caption's scorer instead runs the
PTB tokenizer, which keeps "'s" and "t-shirt" as tokens, so BLEU computed
with it can differ slightly.)

The vocabulary maps words to ids. Four special tokens come first:

    <NULL> = 0   padding after <END>; masked out of the loss
    <START> = 1  fed to the decoder before the first word
    <END> = 2    the decoder emits it to stop
    <UNK> = 3    every word not in the vocabulary

Words are taken from the TRAIN split only (dev/test words must not leak into
the model), keeping those seen at least `min_count` times, in order of
decreasing count (ties alphabetical), so the same captions always give the
same ids.

Maximum length policy (`encode(tokens, max_length)`): a caption longer than
`max_length` words keeps its first `max_length` words and still ends with
<END>, so every encoded caption has at most max_length + 2 ids. Flickr8k
captions are rarely longer than 20 words, so 20 loses little.
"""
import json
import string
from collections import Counter

from nn.persist import atomic_write

__all__ = ["tokenize", "Vocabulary", "NULL", "START", "END", "UNK"]

NULL, START, END, UNK = "<NULL>", "<START>", "<END>", "<UNK>"
SPECIAL_TOKENS = (NULL, START, END, UNK)

_DELETE_PUNCTUATION = str.maketrans("", "", string.punctuation)


def tokenize(caption):
    """Split a caption into lowercase words with punctuation removed.

    Input: caption, a str. Output: list of str (empty for an empty caption).
    Punctuation characters are deleted, not replaced: "t-shirt" -> "tshirt",
    "dog's" -> "dogs", as in NeuralTalk's preprocessing.
    """
    return caption.lower().translate(_DELETE_PUNCTUATION).split()


class Vocabulary:
    """Word <-> id mapping with <NULL>=0, <START>=1, <END>=2, <UNK>=3."""

    def __init__(self, words, min_count=None):
        """words: the ordinary words in id order (ids start after the specials)."""
        words = list(words)
        clash = [w for w in words if w in SPECIAL_TOKENS]
        if clash:
            raise ValueError(f"Vocabulary: words may not include special tokens, got {clash}")
        if len(set(words)) != len(words):
            raise ValueError("Vocabulary: duplicate words in the word list")
        self.id_to_word = list(SPECIAL_TOKENS) + words
        self.word_to_id = {w: i for i, w in enumerate(self.id_to_word)}
        self.min_count = min_count

    @classmethod
    def build(cls, token_lists, min_count=5):
        """Vocabulary of the words seen at least `min_count` times.

        token_lists: iterable of lists of str (tokenized TRAIN captions only).
        Order: decreasing count, ties alphabetical (deterministic).
        """
        if min_count < 1:
            raise ValueError(f"Vocabulary.build: min_count must be >= 1, got {min_count}")
        counts = Counter(word for tokens in token_lists for word in tokens)
        for special in SPECIAL_TOKENS:
            counts.pop(special, None)
        kept = [w for w, c in counts.items() if c >= min_count]
        kept.sort(key=lambda w: (-counts[w], w))
        return cls(kept, min_count=min_count)

    null_id = property(lambda self: 0)
    start_id = property(lambda self: 1)
    end_id = property(lambda self: 2)
    unk_id = property(lambda self: 3)

    def __len__(self):
        return len(self.id_to_word)

    def __contains__(self, word):
        return word in self.word_to_id

    def __eq__(self, other):
        return isinstance(other, Vocabulary) and self.id_to_word == other.id_to_word

    def __repr__(self):
        return f"Vocabulary({len(self)} ids, min_count={self.min_count})"

    def encode(self, tokens, max_length=None):
        """[<START>, w1, ..., wn, <END>] as ids; unknown words -> <UNK>.

        tokens: list of str. max_length: keep at most this many words (the
        result then has at most max_length + 2 ids); None keeps all.
        """
        if max_length is not None:
            if max_length < 0:
                raise ValueError(f"Vocabulary.encode: max_length must be >= 0, got {max_length}")
            tokens = tokens[:max_length]
        unk = self.unk_id
        word_ids = [self.word_to_id.get(w, unk) for w in tokens]
        return [self.start_id] + word_ids + [self.end_id]

    def decode(self, ids):
        """Words of an id sequence: stops at <END>, drops <NULL> and <START>.

        ids: any sequence of ints (list, 1-D array). <UNK> is kept as "<UNK>",
        since it is what the model actually said. Output: list of str.
        """
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.null_id, self.start_id):
                continue
            if not 0 <= i < len(self.id_to_word):
                raise ValueError(f"Vocabulary.decode: id {i} outside 0..{len(self) - 1}")
            words.append(self.id_to_word[i])
        return words

    def to_dict(self):
        return {"format": "captioning-vocabulary", "version": 1,
                "min_count": self.min_count, "id_to_word": list(self.id_to_word)}

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or data.get("format") != "captioning-vocabulary":
            raise ValueError("Vocabulary.from_dict: not a captioning vocabulary "
                             "(missing 'format': 'captioning-vocabulary')")
        words = data.get("id_to_word")
        if not isinstance(words, list) or not all(isinstance(w, str) and w for w in words):
            raise ValueError("Vocabulary.from_dict: 'id_to_word' must be a list of non-empty words")
        if len(set(words)) != len(words):
            raise ValueError("Vocabulary.from_dict: 'id_to_word' lists a word twice")
        if tuple(words[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"Vocabulary.from_dict: the first ids must be {list(SPECIAL_TOKENS)}, "
                             f"got {words[:len(SPECIAL_TOKENS)]}")
        return cls(words[len(SPECIAL_TOKENS):], min_count=data.get("min_count"))

    def save(self, path):
        """Write the vocabulary as JSON, atomically (temp file + rename)."""
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=0)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a vocabulary JSON file ({exc})") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
