"""Grounding without a model: find the described text on the screen with Tesseract.

Used when ``GROUNDER_FAMILY=ocr`` or no model is configured. It can only
find elements that carry text, so the description should quote it (``the
"Save" button``); without quotes the content words of the description are
tried. Tesseract runs as a subprocess (TSV output) with a timeout, never in
the event loop.
"""

from __future__ import annotations

import asyncio
import io
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from difflib import SequenceMatcher

from PIL import Image, ImageOps

from selfagent.errors import OCRError
from selfagent.schemas import ErrorCode

# Small UI fonts are below the glyph size Tesseract is trained on; doubling
# them is the cheapest accuracy gain.
UPSCALE_BELOW_WIDTH = 2000
_QUOTED = re.compile(r"[\"“”«»']([^\"“”«»']{1,200})[\"“”«»']")
_STOP = {
    "a", "an", "the", "on", "in", "at", "of", "to", "for", "with", "and", "or", "that", "which",
    "says", "saying", "labeled", "labelled", "named", "called", "text", "word", "button", "icon",
    "link", "menu", "item", "field", "tab", "label", "click", "press", "select", "open",
    "entry", "option", "window", "title", "top", "bottom", "left", "right", "corner", "screen",
}  # fmt: skip



@dataclass(frozen=True)
class Word:
    text: str
    left: int
    top: int
    width: int
    height: int
    conf: float
    # (pass, block, paragraph, line): words of different passes never form one phrase.
    line: tuple[int, int, int, int]


@dataclass(frozen=True)
class Match:
    text: str
    box: tuple[int, int, int, int]
    score: float

    @property
    def centre(self) -> tuple[int, int]:
        x1, y1, x2, y2 = self.box
        return round((x1 + x2) / 2), round((y1 + y2) / 2)


def _normalise(text: str) -> str:
    return re.sub(r"[^\w]+", " ", text.lower()).strip()


def targets(description: str) -> list[str]:
    """What to look for: quoted text if any, else the content words."""
    quoted = [q.strip() for q in _QUOTED.findall(description) if _normalise(q)]
    if quoted:
        return quoted
    words = [w for w in _normalise(description).split() if w not in _STOP]
    found = [" ".join(words)] if words else []
    found += [w for w in words if len(w) >= 3 and w != found[0]] if words else []
    return found or [description]


def parse_tsv(tsv: str, scale: float = 1.0, pass_index: int = 0) -> list[Word]:
    words: list[Word] = []
    for row in tsv.splitlines()[1:]:
        cols = row.split("\t")
        if len(cols) < 12 or cols[0] != "5" or not cols[11].strip():
            continue
        try:
            left, top, width, height = (int(c) for c in cols[6:10])
            conf = float(cols[10])
            line = (pass_index, int(cols[2]), int(cols[3]), int(cols[4]))
        except ValueError:
            continue
        words.append(
            Word(
                text=cols[11].strip(),
                left=round(left / scale),
                top=round(top / scale),
                width=round(width / scale),
                height=round(height / scale),
                conf=conf,
                line=line,
            )
        )
    return words


def _lines(words: Iterable[Word]) -> list[list[Word]]:
    grouped: dict[tuple[int, int, int, int], list[Word]] = {}
    for word in words:
        grouped.setdefault(word.line, []).append(word)
    return [sorted(ws, key=lambda w: w.left) for ws in grouped.values()]


def best_match(words: list[Word], description: str) -> Match | None:
    best: Match | None = None
    for target in targets(description):
        wanted = _normalise(target)
        if not wanted:
            continue
        size = len(wanted.split())
        for line in _lines(words):
            for n in {max(1, size - 1), size, size + 1}:
                for i in range(len(line) - n + 1):
                    window = line[i : i + n]
                    text = " ".join(w.text for w in window)
                    score = SequenceMatcher(None, wanted, _normalise(text)).ratio()
                    if best is None or score > best.score:
                        box = (
                            min(w.left for w in window),
                            min(w.top for w in window),
                            max(w.left + w.width for w in window),
                            max(w.top + w.height for w in window),
                        )
                        best = Match(text=text, box=box, score=round(score, 3))
    return best


def _prepare(image: Image.Image) -> tuple[bytes, float]:
    scale = 2.0 if image.width < UPSCALE_BELOW_WIDTH else 1.0
    gray = ImageOps.grayscale(image)
    if scale != 1.0:
        gray = gray.resize(
            (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
        )
    buffer = io.BytesIO()
    # PNG level 1: Tesseract decodes it anyway, the smallest file is not worth the CPU.
    gray.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue(), scale


# Two passes, run side by side, because no single setting reads a whole
# desktop: global Otsu with sparse-text layout reads panels and dark-on-light
# UI text; Sauvola (local) thresholding with page layout reads light-on-dark
# and small bitmap fonts. (Sauvola with sparse-text layout drowns in wallpaper
# noise: 10x slower and hundreds of false words, measured on the Xfce desktop.)
PASSES: tuple[tuple[str, str], ...] = (("11", "0"), ("3", "2"))


async def _tesseract(binary: str, data: bytes, psm: str, thresholding: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "stdin", "stdout", "--psm", psm, "-l", "eng",
        "-c", f"thresholding_method={thresholding}", "tsv",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await proc.communicate(data)
    except asyncio.CancelledError:
        # A timed-out OCR must not leave a tesseract process burning CPU.
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip()[-500:]
        raise OCRError(ErrorCode.INTERNAL, f"tesseract failed ({proc.returncode}): {message}")
    return out.decode(errors="replace")


async def read_words(image: Image.Image, time_limit: float) -> list[Word]:
    binary = shutil.which("tesseract")
    if binary is None:
        raise OCRError(ErrorCode.INTERNAL, "tesseract is not installed (package tesseract-ocr)")
    data, scale = await asyncio.to_thread(_prepare, image)
    runs = [_tesseract(binary, data, psm, th) for psm, th in PASSES]
    try:
        outputs = await asyncio.wait_for(asyncio.gather(*runs), time_limit)
    except TimeoutError as exc:
        raise OCRError(ErrorCode.TIMEOUT, f"tesseract took longer than {time_limit:.0f}s") from exc
    words: list[Word] = []
    for index, out in enumerate(outputs):
        words += parse_tsv(out, scale, pass_index=index)
    return words


async def locate(image: Image.Image, description: str, time_limit: float) -> Match | None:
    words = await read_words(image, time_limit)
    return best_match(words, description)
