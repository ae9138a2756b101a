import json

import pytest

from captioning.data.text import Vocabulary, tokenize


def test_tokenize_lowercases_and_deletes_punctuation():
    assert tokenize("A Dog's ball, red. T-shirt!") == ["a", "dogs", "ball", "red", "tshirt"]
    assert tokenize("  two\tspaces \r\n") == ["two", "spaces"]
    assert tokenize(" . , ") == []


def test_build_keeps_words_at_min_count_in_count_order():
    captions = [["a", "dog"], ["a", "cat"], ["a", "dog", "runs"], ["cat", "dog"]]
    vocab = Vocabulary.build(captions, min_count=2)
    # a: 3, dog: 3, cat: 2, runs: 1 (dropped); ties alphabetical.
    assert vocab.id_to_word == ["<NULL>", "<START>", "<END>", "<UNK>", "a", "dog", "cat"]
    assert (vocab.null_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert len(vocab) == 7 and "runs" not in vocab and "cat" in vocab


def test_build_is_deterministic_whatever_the_caption_order():
    captions = [["b", "a"], ["a", "c"], ["c", "b"], ["d"]]
    assert Vocabulary.build(captions, 1) == Vocabulary.build(captions[::-1], 1)


def test_build_ignores_special_tokens_and_rejects_bad_min_count():
    vocab = Vocabulary.build([["<UNK>", "x"], ["<UNK>", "x"]], min_count=2)
    assert vocab.id_to_word[4:] == ["x"]
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build([["x"]], min_count=0)


def test_encode_adds_start_end_and_maps_unknown_words():
    vocab = Vocabulary(["a", "dog"])
    assert vocab.encode(["a", "dog", "barks"]) == [1, 4, 5, 3, 2]
    assert vocab.encode([]) == [1, 2]


def test_encode_max_length_truncates_words_and_keeps_end():
    vocab = Vocabulary(["a", "dog"])
    assert vocab.encode(["a", "dog", "a", "dog"], max_length=2) == [1, 4, 5, 2]
    assert vocab.encode(["a"], max_length=3) == [1, 4, 2]
    with pytest.raises(ValueError, match="max_length"):
        vocab.encode(["a"], max_length=-1)


def test_decode_stops_at_end_and_strips_null_and_start_but_keeps_unk():
    vocab = Vocabulary(["a", "dog"])
    assert vocab.decode([1, 4, 3, 5, 2, 4, 0, 0]) == ["a", "<UNK>", "dog"]
    assert vocab.decode([4, 0, 5]) == ["a", "dog"]
    with pytest.raises(ValueError, match="id 9"):
        vocab.decode([9])


def test_encode_then_decode_round_trips_known_words():
    vocab = Vocabulary.build([tokenize("a dog runs on the grass")], min_count=1)
    words = tokenize("The dog runs on a grass")
    assert vocab.decode(vocab.encode(words)) == words


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build([["b", "a", "a"]], min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.min_count == 1
    assert loaded.word_to_id["a"] == 4
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left behind


def test_load_refuses_files_that_are_not_a_vocabulary(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"id_to_word": ["a", "b"]}))
    with pytest.raises(ValueError, match="bad.json"):
        Vocabulary.load(bad)
    shuffled = tmp_path / "shuffled.json"
    shuffled.write_text(json.dumps({"format": "captioning-vocabulary",
                                    "id_to_word": ["<START>", "<NULL>", "<END>", "<UNK>", "a"]}))
    with pytest.raises(ValueError, match="first ids"):
        Vocabulary.load(shuffled)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match="garbage.json"):
        Vocabulary.load(garbage)


def test_constructor_refuses_duplicates_and_specials():
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="special"):
        Vocabulary(["<END>"])


@pytest.mark.parametrize("words", [
    "<NULL> <START> <END> <UNK> dog",                     # a string, not a list
    ["<NULL>", "<START>", "<END>", "<UNK>", 7],            # a number for a word
    ["<NULL>", "<START>", "<END>", "<UNK>", ""],           # an empty word
    ["<NULL>", "<START>", "<END>", "<UNK>", "dog", "dog"],  # a word twice
])
def test_vocabulary_from_dict_refuses_damaged_word_lists(words):
    with pytest.raises(ValueError, match="id_to_word"):
        Vocabulary.from_dict({"format": "captioning-vocabulary", "id_to_word": words})
