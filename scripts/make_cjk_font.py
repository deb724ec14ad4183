#!/usr/bin/env python3
"""Build assets/fonts/cinder-cjk.ttf, the CJK font the browser build embeds.

The wasm build has no system fonts, so the web app carries a small TrueType font
holding only the glyphs it needs: every character of the Tang poems corpus, plus
printable ASCII, Latin-1 and common CJK punctuation.

Usage (needs `pip install fonttools`; the source font is in Debian's
fonts-droid-fallback package):

    python3 scripts/make_cjk_font.py \
        /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf \
        assets/fonts/cinder-cjk.ttf \
        cache/tang/train.txt cache/tang/val.txt

It prints how many of the corpus's characters the source font covers and lists
the ones it lacks. The output is deterministic (the head table's timestamp is
kept from the source font), so rerunning it on the same inputs gives the same bytes.
"""

import argparse
import sys

from fontTools import subset
from fontTools.ttLib import TTFont

# Characters wanted beyond the corpus: printable ASCII, Latin-1 and CJK punctuation.
EXTRA = (
    "".join(chr(c) for c in range(0x20, 0x7F))
    + "".join(chr(c) for c in range(0xA0, 0x100))
    + "，。！？；：、「」『』（）《》"
)


def corpus_chars(paths):
    chars = set()
    for path in paths:
        with open(path, encoding="utf-8") as f:
            chars.update(f.read())
    # Line breaks, tabs and other control characters need no glyph.
    return {c for c in chars if c.isprintable()}


def subset_options():
    opts = subset.Options()
    opts.hinting = False  # no bytecode, drops fpgm/prep/cvt
    opts.layout_features = []  # egui does no shaping: GSUB/GPOS are dead weight
    opts.drop_tables += ["GSUB", "GPOS", "GDEF", "vhea", "vmtx", "gasp"]
    # Keep family/style names plus the copyright and licence records.
    opts.name_IDs = [0, 1, 2, 3, 4, 5, 6, 13, 14]
    opts.name_languages = ["*"]
    opts.notdef_outline = True  # draw a box for characters the font lacks
    opts.glyph_names = False
    opts.recalc_timestamp = False
    return opts


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="source TrueType font (e.g. DroidSansFallbackFull.ttf)")
    ap.add_argument("output", help="subset font to write (.ttf)")
    ap.add_argument("corpus", nargs="+", help="UTF-8 text files whose characters must be covered")
    args = ap.parse_args()

    corpus = corpus_chars(args.corpus)
    wanted = corpus | set(EXTRA)

    font = TTFont(args.source, recalcTimestamp=False)
    cmap = font.getBestCmap()
    missing = sorted(c for c in corpus if ord(c) not in cmap)
    print(f"corpus: {len(corpus)} distinct printable characters, "
          f"{len(corpus) - len(missing)} covered by the source font, {len(missing)} missing")
    if missing:
        print("missing: " + " ".join(f"{c}(U+{ord(c):04X})" for c in missing))
    extra_missing = sorted(c for c in set(EXTRA) - corpus if ord(c) not in cmap)
    if extra_missing:
        print("extra characters missing: " + " ".join(f"U+{ord(c):04X}" for c in extra_missing))

    sub = subset.Subsetter(options=subset_options())
    sub.populate(unicodes=sorted(ord(c) for c in wanted))
    sub.subset(font)
    font.save(args.output)
    print(f"wrote {args.output}: {font['maxp'].numGlyphs} glyphs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
