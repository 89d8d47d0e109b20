"""A small copy of Tux Paint's stamps layout (tuxpaint-stamps-default): category folders of PNG stamps with alpha,
SVG drawings, descriptions with translations, sound effects, a mirrored copy, and what the installed package holds
besides (six stamps without a description, a description without a stamp)."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image

# category -> its stamps' description stems; each stem is one description, shared by `<stem>.png` and
# `<stem>-1.png` where the stem is in SHARED (frog.png / frog-1.png in the real package)
CATEGORIES = {
    "animals": ["frog", "cat", "dog", "owl", "bee", "eel"],
    "food": ["apple", "bread", "cheese", "grapes", "pear"],
    "town": ["house", "bridge", "tower", "shop"],
}
SHARED = {"frog", "bread", "house"}
SVG_STAMPS = {"owl", "tower"}
SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30"><rect x="5" y="5" width="30" height="20" '
    'fill="#{colour}"/></svg>'
)


def write_stamp(path: Path, seed: int, size: int = 32) -> Path:
    """An RGBA PNG: a coloured disc on a transparent square (what a stamp is)."""
    rng = random.Random(seed)
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    colour = tuple(rng.randrange(256) for _ in range(3))
    for x in range(size):
        for y in range(size):
            if (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2 + seed % 7:
                img.putpixel((x, y), (*colour, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def description(stem: str, category: str) -> str:
    return (
        f"A {stem} from the {category} stamps.\nde.utf8=Ein {stem}.\nfr.utf8=Un {stem} ({category}).\n"
        f"pt_BR.utf8=Um {stem}.\n"
    )


def make_tuxpaint(root: Path) -> Path:
    """The layout: 3 categories with a cartoon/ subfolder each, 18 described stamps (2 SVG-only, 1 with both a PNG
    and an SVG) in 15 description groups."""
    seed = 0
    for category, stems in CATEGORIES.items():
        for k, stem in enumerate(stems):
            folder = root / category / ("cartoon" if k % 2 else "")
            (folder / f"{stem}.txt").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{stem}.txt").write_text(description(stem, category), encoding="utf-8")
            if stem in SVG_STAMPS:
                (folder / f"{stem}.svg").write_text(SVG.format(colour=f"{40 * k:02x}8040"))
            else:
                seed += 1
                write_stamp(folder / f"{stem}.png", seed)
            if stem in SHARED:
                seed += 1
                write_stamp(folder / f"{stem}-1.png", seed)
                (folder / f"{stem}-1.txt").write_text(description(stem, category), encoding="utf-8")
            if k % 3 == 0:
                (folder / f"{stem}.ogg").write_bytes(b"OggS")  # a sound effect: only its presence is read
                (folder / f"{stem}_desc_fr.ogg").write_bytes(b"OggS")
    write_stamp(root / "animals" / "cartoon" / "cat_mirror.png", 99)  # the cat drawn mirrored: not a stamp
    (root / "food" / "cheese.svg").write_text(SVG.format(colour="ffcc00"))  # cheese.png drawn as SVG too
    (root / "animals" / "gift.txt").write_text("A gift.\n")  # a description without its image
    return root
