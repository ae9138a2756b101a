import json
import os
from pathlib import Path

import pytest

from captioning.cli import main
from captioning.data.flickr8k import CaptionFileError, find_flickr8k_dir, load_flickr8k, seeded_split
from data_fixtures import make_kaggle, make_karpathy, make_original, tiny_corpus


def snapshot(root):
    """Every file under root with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(root).rglob("*")}


def test_original_layout_reads_splits_captions_and_tokens(tmp_path):
    splits, captions = tiny_corpus()
    make_original(tmp_path, splits, captions)
    before = snapshot(tmp_path)
    data = load_flickr8k(tmp_path)
    assert data.layout == "original"
    assert {name: s.image_ids for name, s in data.splits.items()} == splits
    train = data["train"]
    assert train.captions[0] == captions[splits["train"][0]]
    assert train.tokens[0][0] == ["a", "dog", "runs", "number", "0"]
    assert all(Path(p).is_file() for p in train.image_paths)
    assert data.report.images == {"train": 6, "dev": 2, "test": 2}
    assert data.report.captions == {"train": 30, "dev": 10, "test": 10}
    assert data.report.skipped == {}
    assert snapshot(tmp_path) == before  # nothing written into the data folder


def test_original_layout_quirks_are_skipped_and_counted(tmp_path):
    splits, captions = tiny_corpus()
    first = splits["train"][0]
    quirks = [f"{first}.1#0\tpeople waiting for the subway",  # the real token file's ghost image
              f"{first}#0\tA dog runs , number 0 .",           # duplicate line
              f"{splits['dev'][0]}#5\t . ",                     # empty caption
              "no tab on this line"]
    make_original(tmp_path, splits, captions, newline="\r\n", extra_token_lines=quirks,
                  extra_split_ids={"test": ["999_missing.jpg", splits["train"][1]]})
    token_file = tmp_path / "Flickr8k_text" / "Flickr8k.token.txt"
    token_file.write_bytes(token_file.read_bytes() + f"{first}#7\tcaf\xe9 latin-1\r\n".encode("latin-1"))
    data = load_flickr8k(tmp_path)
    assert data.report.skipped == {
        "captions of images not found": 1, "duplicate caption lines": 1, "empty captions": 1,
        "malformed caption lines": 1, "lines that are not UTF-8": 1,
        "split-list ids with no image file": 1, "split-list ids listed twice": 1}
    assert [len(c) for c in data["train"].captions] == [5] * 6
    assert data["test"].image_ids == splits["test"]
    assert "ghost" not in str(data.report) and "999_missing.jpg" in str(data.report)


def test_split_ids_without_captions_are_skipped(tmp_path):
    splits, captions = tiny_corpus()
    make_original(tmp_path, splits, captions)
    (tmp_path / "Flicker8k_Dataset" / "extra.jpg").write_bytes(b"")
    with open(tmp_path / "Flickr8k_text" / "Flickr_8k.devImages.txt", "a") as f:
        f.write("extra.jpg\n")
    data = load_flickr8k(tmp_path)
    assert data.report.skipped == {"split-list ids with no captions": 1}
    assert "extra.jpg" not in data["dev"].image_ids


def test_kaggle_layout_with_quoted_commas_and_official_lists(tmp_path):
    splits, captions = tiny_corpus()
    make_kaggle(tmp_path, captions, split_lists=splits)
    data = load_flickr8k(tmp_path)
    assert data.layout == "kaggle"
    assert {name: s.image_ids for name, s in data.splits.items()} == splits
    dev_first = splits["dev"][0]
    assert data["dev"].captions[0][1] == "a dev dog, caption 1"  # the quoted comma survived
    assert data["dev"].image_ids[0] == dev_first
    assert "official split lists" in str(data.report)


def test_kaggle_layout_without_lists_uses_the_documented_seeded_split(tmp_path):
    splits, captions = tiny_corpus(n_train=12, n_dev=2, n_test=2)  # 16 images -> 12/2/2
    captions["ghost.jpg.1"] = ["an image that is not there"] * 5
    make_kaggle(tmp_path, captions)
    (tmp_path / "Images" / "ghost.jpg.1").unlink()
    data = load_flickr8k(tmp_path, seed=3)
    del captions["ghost.jpg.1"]
    assert data.report.skipped == {"captions of images not found": 5}
    expected = seeded_split(list(captions), seed=3)
    assert {name: s.image_ids for name, s in data.splits.items()} == expected
    assert [len(expected[n]) for n in ("train", "dev", "test")] == [12, 2, 2]
    assert sorted(sum(expected.values(), [])) == sorted(captions)  # disjoint, covers all
    assert data.report.images == {"train": 12, "dev": 2, "test": 2}


def test_seeded_split_sizes_match_the_official_split_for_full_size_data():
    ids = [f"{i}.jpg" for i in range(8091)]
    split = seeded_split(ids, seed=0)
    assert [len(split[n]) for n in ("train", "dev", "test")] == [6000, 1000, 1000]
    assert split == seeded_split(ids[::-1], seed=0)
    assert split["test"] != seeded_split(ids, seed=1)["test"]


def test_karpathy_layout_maps_val_to_dev_and_uses_json_tokens(tmp_path):
    splits, captions = tiny_corpus()
    make_karpathy(tmp_path, splits, captions, image_folder="Flicker8k_Dataset")
    data = load_flickr8k(tmp_path)
    assert data.layout == "karpathy"
    assert {name: s.image_ids for name, s in data.splits.items()} == splits
    assert data["dev"].tokens[0][1] == ["a", "dev", "dog", "caption", "1"]


def test_missing_files_give_one_message_listing_every_layout(tmp_path):
    (tmp_path / "Images").mkdir()
    with pytest.raises(FileNotFoundError) as info:
        load_flickr8k(tmp_path)
    message = str(info.value)
    for expected in ("original: missing", "Flickr8k.token.txt", "Flicker8k_Dataset",
                     "karpathy: missing", "dataset_flickr8k.json",
                     "kaggle: missing captions.txt", "download"):
        assert expected in message
    assert "Images/" not in message.split("kaggle")[1]  # Images/ exists: not reported missing
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_flickr8k(tmp_path / "nope")
    with pytest.raises(ValueError, match="unknown Flickr8k layout"):
        load_flickr8k(tmp_path, layout="coco")


def test_find_flickr8k_dir_prefers_flag_then_environment(tmp_path, monkeypatch):
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir()
    env.mkdir()
    monkeypatch.setenv("FLICKR8K_DIR", str(env))
    assert find_flickr8k_dir(str(flag)) == flag
    assert find_flickr8k_dir() == env
    with pytest.raises(FileNotFoundError, match="--data"):
        find_flickr8k_dir(str(tmp_path / "missing"))
    monkeypatch.setenv("FLICKR8K_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="FLICKR8K_DIR"):
        find_flickr8k_dir()
    a_file = tmp_path / "captions.txt"
    a_file.write_text("")
    with pytest.raises(FileNotFoundError, match=r"captions.txt \(from --data\) is a file: give the folder"):
        find_flickr8k_dir(str(a_file))


def test_real_flickr8k_has_the_official_split_with_five_captions_each(flickr8k):
    data = load_flickr8k(flickr8k)
    assert data.layout == "original"
    assert data.report.images == {"train": 6000, "dev": 1000, "test": 1000}
    for split in data.splits.values():
        assert {len(c) for c in split.captions} == {5}
    assert data.report.skipped == {"captions of images not found": 5}  # 2258277193_586949ec62.jpg.1
    assert not set(data["train"].image_ids) & set(data["test"].image_ids)
    assert os.path.isfile(data["test"].image_paths[0])


def test_subset_slices_a_flickr8k_split(tmp_path):
    splits, captions = tiny_corpus()
    make_original(tmp_path, splits, captions)
    train = load_flickr8k(tmp_path)["train"]
    first = train.subset(range(3))
    assert first.image_ids == splits["train"][:3] and first.image_paths == train.image_paths[:3]
    assert first.tokens == train.tokens[:3] and first.num_captions == 15


def one_image_karpathy(tmp_path, body):
    """A karpathy-layout folder with one photo and `body` (bytes) as its JSON file."""
    (tmp_path / "Images").mkdir()
    (tmp_path / "Images" / "a.jpg").write_bytes(b"")
    (tmp_path / "dataset_flickr8k.json").write_bytes(body)
    return tmp_path


GOOD_ENTRY = {"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["a", "dog"], "raw": "A dog."}]}
WRONG_KARPATHY_SCHEMAS = {
    "top-level list": (b"[1, 2]", "expected a JSON object"),
    "images null": (b'{"images": null}', '"images" is null, expected a list'),
    "images a dict": (b'{"images": {"a.jpg": 1}}', '"images" is an object'),
    "images of strings": (b'{"images": ["a.jpg"]}', "images[0] is a string"),
    "sentences as strings": (json.dumps({"images": [{**GOOD_ENTRY, "sentences": ["a dog"]}]}).encode(),
                             "images[0].sentences[0] is a string"),
    "integer tokens": (json.dumps({"images": [{**GOOD_ENTRY, "sentences": [{"tokens": ["a", 7]}]}]}).encode(),
                       "images[0].sentences[0].tokens[1] is a number (7), expected a word"),
    "no images key": (b'{"dataset": "flickr8k"}', 'no "images" key'),
    "invalid JSON": (b'{"images": [}', "not valid JSON"),
    "empty file": (b"", "is empty"),
    "latin-1 bytes": (json.dumps({"images": [GOOD_ENTRY]}).encode().replace(b"A dog", b"caf\xe9" * 5000),
                      "not UTF-8"),
    "split a list": (json.dumps({"images": [{**GOOD_ENTRY, "split": ["train"]}]}).encode(),
                     "images[0].split is a list"),
}


@pytest.mark.parametrize("variant", sorted(WRONG_KARPATHY_SCHEMAS))
def test_karpathy_json_of_the_wrong_schema_is_a_short_caption_file_error(tmp_path, variant, capsys):
    body, expected = WRONG_KARPATHY_SCHEMAS[variant]
    root = one_image_karpathy(tmp_path, body)
    with pytest.raises(CaptionFileError) as info:
        load_flickr8k(root)
    message = str(info.value)
    assert expected in message and "dataset_flickr8k.json" in message
    assert "\n" not in message and len(message) < 300
    assert main(["features", "--data", str(root)]) == 2   # the CLI: one line, no traceback
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_karpathy_tokens_must_be_a_list_of_words(tmp_path):
    entry = {**GOOD_ENTRY, "sentences": [{"tokens": "a dog runs", "raw": "A dog runs."}]}
    root = one_image_karpathy(tmp_path, json.dumps({"images": [entry]}).encode())
    with pytest.raises(CaptionFileError, match=r"images\[0\].sentences\[0\].tokens is a string "
                                               r"\('a dog runs'\), expected a list of words"):
        load_flickr8k(root)


def test_token_lines_with_extra_tab_columns_are_skipped_and_named(tmp_path):
    splits, captions = tiny_corpus()
    first = splits["train"][0]
    make_original(tmp_path, splits, captions, extra_token_lines=[f"{first}#5\ta dog\tx\t42", f"{first}#x\tbad key"])
    data = load_flickr8k(tmp_path)
    assert data.report.skipped == {"malformed caption lines": 2}
    assert "Flickr8k.token.txt:51: 4 tab-separated columns" in str(data.report)
    assert not {"x", "42"} & {w for t in data["train"].all_tokens() for w in t}
    assert [len(c) for c in data["train"].captions] == [5] * 6


def test_kaggle_unclosed_quote_loses_only_its_line_and_says_so(tmp_path):
    splits, captions = tiny_corpus(n_train=26, n_dev=2, n_test=2)
    make_kaggle(tmp_path, captions, split_lists=splits)
    lines = (tmp_path / "captions.txt").read_text().splitlines()
    broken = lines[3].split(",", 1)[0] + ',"a dog runs'   # a quote that never closes
    lines[3] = broken
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    data = load_flickr8k(tmp_path)
    assert data.report.skipped == {"malformed caption lines": 1}
    assert "captions.txt:4: a quote opens a field but does not close on this line" in str(data.report)
    assert sum(data.report.images.values()) == 30 and sum(data.report.captions.values()) == 149
    assert max(len(c) for s in data.splits.values() for cs in s.captions for c in cs) < 40


def test_captions_with_odd_whitespace_are_one_line_and_long_ones_are_reported(tmp_path):
    splits, captions = tiny_corpus()
    first, second = splits["train"][:2]
    captions[first][1] = "a dog\truns\u2028home"
    captions[second][0] = "a dog " * 100       # 600 characters: no Flickr8k caption is that long
    make_kaggle(tmp_path, captions, split_lists=splits)
    data = load_flickr8k(tmp_path)
    assert data["train"].captions[0][1] == "a dog runs home"
    assert data.report.skipped == {"implausibly long captions (over 500 characters)": 1}
    assert "captions.txt:7: a dog a dog" in str(data.report)


def test_kaggle_file_without_its_header_is_an_error_naming_the_line(tmp_path):
    splits, captions = tiny_corpus()
    make_kaggle(tmp_path, captions)
    text = (tmp_path / "captions.txt").read_text()
    (tmp_path / "captions.txt").write_text("caption,image\n" + text.split("\n", 1)[1])
    with pytest.raises(CaptionFileError, match=r"captions.txt line 1: expected the header 'image,caption', "
                                               r"found 'caption,image'"):
        load_flickr8k(tmp_path)


def test_a_reader_that_loses_lines_unreported_is_caught(tmp_path, monkeypatch):
    import captioning.data.caption_files as caption_files
    splits, captions = tiny_corpus()
    make_kaggle(tmp_path, captions, split_lists=splits)
    monkeypatch.setattr(caption_files, "_add_caption",   # one that silently drops each "caption 3"
                        lambda captions, image_id, caption, report, where:
                        "caption 3" in caption or captions.setdefault(image_id, []).append(caption))
    with pytest.raises(CaptionFileError, match=r"captions.txt: holds 50 captions, but 40 were read and 0 skipped"):
        load_flickr8k(tmp_path)


def test_a_caption_file_with_no_usable_caption_says_so_not_that_photos_are_missing(tmp_path, capsys):
    splits, captions = tiny_corpus()
    make_original(tmp_path, splits, captions)
    token_file = tmp_path / "Flickr8k_text" / "Flickr8k.token.txt"
    token_file.write_text("\n \n")
    with pytest.raises(CaptionFileError, match=r"Flickr8k.token.txt holds no captions: expected one "
                                               r"'<image>#<k><TAB><caption>' line per caption"):
        load_flickr8k(tmp_path)
    token_file.write_text("".join(f"{image_id}\t{c[0]}\n" for image_id, c in captions.items()))
    assert main(["features", "--data", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "none of the photos" not in error and error.count("\n") == 1
    assert "Flickr8k.token.txt has no usable caption: all 10 were skipped (10 malformed caption lines, e.g. " \
           "Flickr8k.token.txt:1: '1000_abc0.jpg' is not <image>#<k>" in error


@pytest.mark.parametrize("layout", ["kaggle", "karpathy"])
def test_kaggle_and_karpathy_files_with_no_caption_are_errors(tmp_path, layout):
    splits, captions = tiny_corpus()
    if layout == "kaggle":
        make_kaggle(tmp_path, captions)
        (tmp_path / "captions.txt").write_text("image,caption\n")
    else:
        make_karpathy(tmp_path, splits, captions)
        (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": [
            {"filename": i, "split": "train", "sentences": [{"raw": " . "}]} for i in captions]}))
    with pytest.raises(CaptionFileError, match="holds no captions" if layout == "kaggle" else
                       "no usable caption: all 10 were skipped \\(10 empty captions, e.g. 1000_abc0.jpg\\)"):
        load_flickr8k(tmp_path)


def test_captions_with_control_characters_are_skipped_and_shown_escaped(tmp_path):
    splits, captions = tiny_corpus()
    first = splits["train"][0]
    make_original(tmp_path, splits, captions, extra_token_lines=[f"{first}#5\ta dog\x1b[2J\x00 runs\x0b"])
    data = load_flickr8k(tmp_path)
    assert data.report.skipped == {"captions with unprintable characters": 1}
    assert [len(c) for c in data["train"].captions] == [5] * 6
    assert "Flickr8k.token.txt:51: a dog\\x1b[2J\\x00 runs" in str(data.report)
    assert all(line.isprintable() for line in str(data.report).splitlines())


def test_karpathy_images_listed_twice_or_of_unknown_split_are_skipped_and_counted(tmp_path):
    splits, captions = tiny_corpus()
    make_karpathy(tmp_path, splits, captions)
    path = tmp_path / "dataset_flickr8k.json"
    document = json.loads(path.read_text())
    first = document["images"][0]
    document["images"] += [{**first, "sentences": first["sentences"][:2]},
                           {**document["images"][1], "filename": "1001_abc1.jpg", "split": "extra"}]
    document["images"][1]["split"] = "holdout"
    path.write_text(json.dumps(document))
    data = load_flickr8k(tmp_path)
    assert data.report.skipped == {"captions of JSON images listed twice": 2,
                                   "captions of JSON images with an unknown split": 10}
    assert data["train"].image_ids == splits["train"][:1] + splits["train"][2:]
    assert [len(c) for c in data["train"].captions] == [5] * 5   # the first entry of an image wins
