"""Copy a small Flickr8k subset (original layout) for the GPU check, which cannot see ../shared.

    python benchmarks/flickr_subset.py [--data ../shared/flickr8k] [--dest .device/flickr_subset]
                                       [--per-split 200]

Copies Flickr8k_text/ whole and the first --per-split images of each official
split list (plus three dog photos the encoder tests use) into --dest, which
is git-ignored so that the device tool can carry it (`carry: [".device"]`).
The data folder is only read. About 12 MB with the defaults.
"""
import argparse
import shutil
from pathlib import Path

DOG_PHOTOS = ["1383840121_c092110917.jpg", "1187435567_18173c148b.jpg", "1244140539_da4804d828.jpg"]
SPLIT_LISTS = ["Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/flickr8k", help="Flickr8k in its original layout")
    parser.add_argument("--dest", default=".device/flickr_subset", help="where the subset goes")
    parser.add_argument("--per-split", type=int, default=200, help="images per split (default 200)")
    args = parser.parse_args()
    data, dest = Path(args.data), Path(args.dest)
    text, photos = data / "Flickr8k_text", data / "Flicker8k_Dataset"
    if not (text.is_dir() and photos.is_dir()):
        raise SystemExit(f"{data} is not Flickr8k in its original layout "
                         "(Flickr8k_text/ and Flicker8k_Dataset/ expected)")
    shutil.copytree(text, dest / "Flickr8k_text", dirs_exist_ok=True)
    (dest / "Flicker8k_Dataset").mkdir(parents=True, exist_ok=True)
    names = list(DOG_PHOTOS)
    for split in SPLIT_LISTS:
        listed = [line.strip() for line in (text / split).read_text().splitlines() if line.strip()]
        names += listed[:args.per_split]
    copied = 0
    for name in dict.fromkeys(names):
        if (photos / name).is_file():
            shutil.copy2(photos / name, dest / "Flicker8k_Dataset" / name)
            copied += 1
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"{copied} images and Flickr8k_text/ in {dest} ({size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main()
