#!/usr/bin/env python
"""Build the embedded default dataset: Noto Color Emoji rendered as NES-palette pixel sprites.

Writes ``pixelbyte/data/emoji_sprites.parquet`` (columns ``image``, ``caption``, ``name``,
``group``, ``subgroup``) -- the dataset ``pixelbyte.data.load_pixelbytes("embedded")`` loads.
The font is needed only here, at build time; the package ships the parquet file, never the font.

Inputs (Debian/Ubuntu: ``apt-get install fonts-noto-color-emoji unicode-data``):
  --emoji-test  Unicode emoji-test.txt (names, groups, subgroups, qualification status)
  --font        NotoColorEmoji.ttf (a CBDT bitmap font whose only strike is 109 ppem)

Per emoji (file order, so the output is deterministic):
  1. keep ``fully-qualified`` entries; skip the ``Component`` group and every sequence holding a
     skin-tone modifier (U+1F3FB..U+1F3FF) or a hair component (U+1F9B0..U+1F9B3): they are
     recoloured / restyled copies of a base emoji;
  2. render with Pillow (raqm layout, so ZWJ sequences, flags and keycaps become one glyph) on a
     transparent canvas, crop to the alpha bounding box; skip (and report) emoji that render
     empty or that the font does not shape into a single glyph;
  3. downscale so the longer side is ``--size`` px, in premultiplied alpha (edges keep their
     colour instead of fading to black), threshold alpha (>= ``--alpha-threshold`` opaque,
     else transparent), composite on white, snap every pixel to the NES palette (CIELAB);
  4. caption ``"{name}. {group}, {subgroup}"`` in lowercase ASCII from the vocabulary,
     e.g. ``"red apple. food and drink, food fruit"``.

Usage (the exact command that built the shipped file, from the repository root):
    .venv/bin/python scripts/build_embedded_dataset.py --grid docs/embedded_sprites.png
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from pixelbyte import tokenizer as tok  # noqa: E402

SKIN_TONES = range(0x1F3FB, 0x1F3FF + 1)
HAIR = range(0x1F9B0, 0x1F9B3 + 1)
FONT_PPEM = 109  # Noto Color Emoji's only bitmap strike
# characters of emoji names that have no token: spelled out, or mapped to an ASCII equivalent.
# (Accents are removed by normalize_text's NFKD: "piñata" -> "pinata".)
TEXT_FIXES = {"&": "and", "#": "number sign", "\u2019": "'", "\u201c": '"', "\u201d": '"'}
RESAMPLE = {"box": Image.BOX, "lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR,
            "hamming": Image.HAMMING, "bicubic": Image.BICUBIC}


def parse_emoji_test(path: Path) -> tuple[list[dict], dict]:
    """emoji-test.txt -> (kept entries in file order, skip counts)."""
    group = subgroup = version = ""
    kept, skipped = [], {"not fully-qualified": 0, "component group": 0,
                         "skin tone": 0, "hair component": 0}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line.startswith("# Version:"):
            version = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            fields, comment = line.split("#", 1)
            codes, status = (f.strip() for f in fields.split(";"))
            cps = [int(c, 16) for c in codes.split()]
            if group == "Component":
                skipped["component group"] += 1
            elif status != "fully-qualified":
                skipped["not fully-qualified"] += 1
            elif any(c in SKIN_TONES for c in cps):
                skipped["skin tone"] += 1
            elif any(c in HAIR for c in cps):
                skipped["hair component"] += 1
            else:
                # comment: " <emoji> E<version> <name>"
                name = comment.strip().split(" ", 2)[2]
                kept.append({"emoji": "".join(map(chr, cps)), "codepoints": codes, "name": name,
                             "group": group, "subgroup": subgroup})
    return kept, {"unicode_version": version, "skipped": skipped}


def make_caption(name: str, group: str, subgroup: str) -> tuple[str, int]:
    """-> (caption in the token vocabulary, number of characters lost or replaced by a space)."""
    group, subgroup = group.replace("-", " "), subgroup.replace("-", " ")
    text = f"{name}. {group}, {subgroup}"
    for bad, good in TEXT_FIXES.items():
        text = text.replace(bad, good)
    # characters normalize_text would silently drop (non-ASCII that is not a mere accent)
    decomposed = unicodedata.normalize("NFKD", text)
    dropped = sum(1 for ch in decomposed if ord(ch) > 127 and not unicodedata.combining(ch))
    clean, replaced = tok.normalize_text(text)
    return " ".join(clean.split()), dropped + replaced


def render(emoji: str, font: ImageFont.FreeTypeFont) -> Image.Image | None:
    """Emoji -> RGBA image of the glyph cropped to its alpha bounding box (None if empty)."""
    left, top, right, bottom = font.getbbox(emoji)
    pad = 8
    canvas = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), emoji, font=font, embedded_color=True)
    bbox = canvas.getchannel("A").getbbox()
    return canvas.crop(bbox) if bbox else None


def to_sprite(rgba: Image.Image, size: int, resample: int, alpha_threshold: int) -> Image.Image:
    """Cropped RGBA glyph -> RGB sprite, longer side ``size``, in the NES palette, on white."""
    w, h = rgba.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    # resize premultiplied colour ("RGBa"), so transparent pixels do not darken the edges
    small = rgba.convert("RGBa").resize(new, resample).convert("RGBA")
    arr = np.asarray(small).copy()
    opaque = arr[..., 3] >= alpha_threshold
    arr[..., :3][~opaque] = 255            # transparent -> white background
    rgb = np.ascontiguousarray(arr[..., :3])
    return Image.fromarray(tok.to_palette_rgb(rgb), "RGB")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def font_version(font_path: Path) -> str:
    """The font's version string (name table id 5), e.g. 'Version 2.042;GOOG;noto-emoji:...'."""
    try:
        from fontTools.ttLib import TTFont  # installed with matplotlib
        return TTFont(str(font_path), lazy=True)["name"].getDebugName(5)
    except Exception:
        return "unknown (install fonttools to record it)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--emoji-test", type=Path, default=Path("/usr/share/unicode/emoji/emoji-test.txt"),
                   help="Unicode emoji-test.txt (Debian: unicode-data)")
    p.add_argument("--font", type=Path, default=Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"),
                   help="Noto Color Emoji font (Debian: fonts-noto-color-emoji)")
    p.add_argument("--out", type=Path, default=ROOT / "pixelbyte" / "data" / "emoji_sprites.parquet",
                   help="output parquet file")
    p.add_argument("--size", type=int, default=24, help="longer side of every sprite, px")
    p.add_argument("--resample", choices=sorted(RESAMPLE), default="box",
                   help="downscale filter (on premultiplied alpha)")
    p.add_argument("--alpha-threshold", type=int, default=128, help="alpha >= this is opaque")
    p.add_argument("--limit", type=int, default=None, help="keep only the first N emoji (quick tries)")
    p.add_argument("--grid", type=Path, default=None, help="also save a preview grid PNG here")
    p.add_argument("--grid-n", type=int, default=48, help="sprites in the preview grid")
    args = p.parse_args(argv)

    import datasets

    entries, info = parse_emoji_test(args.emoji_test)
    if args.limit:
        entries = entries[: args.limit]
    font = ImageFont.truetype(str(args.font), FONT_PPEM, layout_engine=ImageFont.Layout.RAQM)

    cols = {k: [] for k in ("image", "caption", "name", "group", "subgroup")}
    empty, not_one_glyph, text_fixes, shapes, n_tokens, n_pixel_tokens = [], [], 0, [], [], []
    one_advance = font.getlength("\U0001F600")
    for e in entries:
        if font.getlength(e["emoji"]) > 1.5 * one_advance:   # sequence not shaped into one glyph
            not_one_glyph.append(f"{e['codepoints']} {e['name']}")
            continue
        glyph = render(e["emoji"], font)
        if glyph is None:                                      # no visible pixels (unsupported)
            empty.append(f"{e['codepoints']} {e['name']}")
            continue
        sprite = to_sprite(glyph, args.size, RESAMPLE[args.resample], args.alpha_threshold)
        caption, n_fixed = make_caption(e["name"], e["group"], e["subgroup"])
        text_fixes += n_fixed
        seq = tok.encode_item(sprite, caption)        # the project's encoder, for the statistics
        shapes.append(sprite.size[::-1])
        n_tokens.append(len(seq))
        n_pixel_tokens.append(sprite.size[0] * sprite.size[1] + sprite.size[1])  # + row ends
        cols["image"].append({"bytes": png_bytes(sprite), "path": None})
        cols["caption"].append(caption)
        for k in ("name", "group", "subgroup"):
            cols[k].append(e[k])

    ds = datasets.Dataset.from_dict(cols).cast_column("image", datasets.Image())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(args.out))

    # statistics for the dataset card (tokens as counted by pixelbyte.tokenizer.encode_item)
    shapes, total, n_pix = np.array(shapes), np.array(n_tokens), np.array(n_pixel_tokens)
    n_text = np.array([len(c) for c in cols["caption"]])
    report = {
        "items": len(ds), "unicode_emoji_version": info["unicode_version"],
        "font_version": font_version(args.font), "skipped": {**info["skipped"], "rendered empty": len(empty),
                                                          "not one glyph": len(not_one_glyph)},
        "rendered_empty": empty, "not_one_glyph": not_one_glyph, "caption_chars_fixed": text_fixes,
        "file_bytes": args.out.stat().st_size,
        "height": [int(shapes[:, 0].min()), float(shapes[:, 0].mean().round(2)), int(shapes[:, 0].max())],
        "width": [int(shapes[:, 1].min()), float(shapes[:, 1].mean().round(2)), int(shapes[:, 1].max())],
        "square": int((shapes[:, 0] == shapes[:, 1]).sum()),
        "tokens_per_item": [int(total.min()), float(total.mean().round(1)), int(total.max())],
        "tokens_total": int(total.sum()),
        # image segment (colours + row ends) vs. text segments (shape "(h, w)" + caption, with \n)
        "image_segment_token_share": round(float(n_pix.sum() / total.sum()), 4),
        "text_segment_token_share": round(float(1 - n_pix.sum() / total.sum()), 4),
        "colour_token_share": round(float((shapes[:, 0] * shapes[:, 1]).sum() / total.sum()), 4),
        "caption_chars": [int(n_text.min()), float(n_text.mean().round(1)), int(n_text.max())],
    }
    print(json.dumps(report, indent=1))

    if args.grid is not None:
        import matplotlib
        matplotlib.use("Agg")
        from pixelbyte.plots import save_figure, sprite_grid

        idx = np.linspace(0, len(ds) - 1, min(args.grid_n, len(ds))).round().astype(int)
        sub = ds.select(idx)
        fig = sprite_grid(sub["image"], sub["caption"], ncols=8,
                          title=f"Embedded dataset: {len(ds)} Noto emoji as {args.size}px NES-palette sprites "
                                f"(every {len(ds) // len(idx)}th)")
        save_figure(fig, args.grid)
        print(f"grid -> {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
