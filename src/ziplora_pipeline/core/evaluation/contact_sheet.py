"""Contact sheets: a labelled grid of images, rows = prompts, columns = methods (PIL only)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)  # a cell with no image (e.g. a method switched off for that run)
PAD = 4
GUTTER = 2  # white pixels right of and below each image, so neighbouring cells stay apart


@dataclass(frozen=True)
class SheetLayout:
    """Pixel geometry: a title band, a header band of column labels, a column of row labels, then cells."""

    n_rows: int
    n_cols: int
    cell: int
    label_width: int
    header_height: int
    title_height: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.label_width + self.n_cols * self.cell,
                self.title_height + self.header_height + self.n_rows * self.cell)

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Top-left pixel of cell (row, col)."""
        return self.label_width + col * self.cell, self.title_height + self.header_height + row * self.cell


def _font():
    return ImageFont.load_default()


def _line_height(font) -> int:
    box = font.getbbox("Ag")
    return box[3] - box[1] + 3


def wrap(text: str, font, width: int) -> list[str]:
    """Greedy wrap at spaces and underscores (kept) so each line fits ``width`` pixels."""
    words = [w for w in re.split(r"(?<=[ _])", text) if w]
    lines, line = [], ""
    for word in words:
        if line and font.getlength(line + word) > width:
            lines.append(line.rstrip())
            line = word
        else:
            line += word
    return lines + [line.rstrip()] if line else lines


def sheet_layout(rows: list[str], cols: list[str], cell: int, title: str = "", label_width: int = 200) -> SheetLayout:
    font = _font()
    lh = _line_height(font)
    header_lines = max((len(wrap(c, font, cell - PAD)) for c in cols), default=1)
    return SheetLayout(len(rows), len(cols), cell, label_width, header_lines * lh + 2 * PAD,
                       lh + 2 * PAD if title else 0)


def check_same_size(images: dict[str, Image.Image], what: str = "images") -> tuple[int, int]:
    """Return the common size of ``images``; raise ``ValueError`` naming the odd ones out otherwise."""
    sizes: dict[tuple[int, int], list[str]] = {}
    for name, img in images.items():
        sizes.setdefault(img.size, []).append(name)
    if len(sizes) > 1:
        listing = "; ".join(f"{w}x{h}: {', '.join(sorted(n)[:3])}{' …' if len(n) > 3 else ''}"
                            for (w, h), n in sorted(sizes.items()))
        raise ValueError(f"The {what} have different sizes ({listing}). Use one resolution for all of them "
                         "(generation.resolution / data_prep.resolution) and run again.")
    return next(iter(sizes)) if sizes else (0, 0)


def contact_sheet(cells: dict[tuple[str, str], Image.Image], rows: list[str], cols: list[str], cell: int = 96,
                  title: str = "", row_labels: dict[str, str] | None = None) -> Image.Image:
    """Grid of ``cells[(row, col)]`` resized to ``cell`` px, with column and row labels.

    Raises:
        ValueError: the images do not all have the same size.
    """
    check_same_size({f"{r} / {c}": im for (r, c), im in cells.items()}, "contact-sheet images")
    layout = sheet_layout(rows, cols, cell, title)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw, font, lh = ImageDraw.Draw(sheet), _font(), _line_height(_font())
    if title:
        draw.text((PAD, PAD), title, fill=(0, 0, 0), font=font)
    for j, col in enumerate(cols):
        x, _ = layout.origin(0, j)
        for k, line in enumerate(wrap(col, font, cell - PAD)):
            draw.text((x + PAD // 2, layout.title_height + PAD + k * lh), line, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        _, y = layout.origin(i, 0)
        label = (row_labels or {}).get(row, row)
        for k, line in enumerate(wrap(label, font, layout.label_width - 2 * PAD)[: max(1, cell // lh)]):
            draw.text((PAD, y + PAD + k * lh), line, fill=(0, 0, 0), font=font)
        for j, col in enumerate(cols):
            img = cells.get((row, col))
            sheet.paste(_tile(img, cell - GUTTER), layout.origin(i, j))
    return sheet


def _tile(img: Image.Image | None, cell: int) -> Image.Image:
    """Upscale small (miniature) images with NEAREST so pixels stay visible; downscale with LANCZOS."""
    if img is None:
        return Image.new("RGB", (cell, cell), MISSING)
    method = Image.Resampling.NEAREST if img.width <= cell else Image.Resampling.LANCZOS
    return img.convert("RGB").resize((cell, cell), method)
