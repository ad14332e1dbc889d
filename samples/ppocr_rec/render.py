"""Seeded text lines and their rendering with PIL, so the ground truth of every image is known.

Everything is derived from ``(seed, stream, index)`` through numpy's ``SeedSequence``: the
same arguments give the same text and the same pixels, and a line's image does not depend
on how many lines were rendered before it. The fonts are the DejaVu files bundled inside
matplotlib, so two machines with the same package versions render the same pixels.
"""

from __future__ import annotations

import functools
import importlib.util
import zlib
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from optimizer.errors import InputError

SYSTEM_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)
MIN_CHARS, MAX_CHARS = 8, 40
FONT_SIZES = (24, 40)  # pixels, inclusive
MAX_ROTATION_DEG = 1.5

# A fixed vocabulary keeps the text reproducible without any corpus download. Plain ASCII on
# purpose: every character is in the PP-OCR charset and reads the same in all DejaVu faces.
WORDS = """
about above account active address after again against agent air all also amount and
annual answer any apple april area around art august available average back balance bank
base basic batch before begin below best better between bill black blue board body book
both box branch bread brown build business buy call can card care carry case cash center
change charge check city class clean clear client close code cold color come common company
complete contact copy corner cost could country course credit cup current customer daily
dark data date day december delivery design desk detail direct discount door down draft
drive due each early east easy edge end energy entry even event every express family fast
february fee field file final fine first floor food for form free fresh friday from front
fruit full fund garden general get gift give glass global gold good green group guide half
hand hard have head health heavy help high hold home hotel hour house image import into
invoice item january job july june just keep key kind kitchen label large last late lead
leaf left less level light limit line list little local long low machine main make manager
march market may meeting member metal method middle milk minute model monday money month
more morning motor much name net never new next night north note november number october
office order original other out over owner page paid paper park part party pay payment
people period place plan plant plus point power press price print product public quality
quantity quick quiet rate read ready receipt record red refund region report rest return
right river road room round route safe sale sample saturday save school second secure see
send september service set share ship short side sign silver simple single size small smart
soft sound south special speed staff standard start state station steel step stock store
street strong subtotal summer sunday supply support system table take tax team test text
thank the thursday ticket time today total tour track trade train transfer travel tuesday
type under unit update user value vendor view visit wall warm water way wednesday week
weight west white window winter with wood work world year yellow you your zone
""".split()
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
CURRENCIES = ("$", "EUR ", "USD ", "GBP ", "")
UPPER = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I/O: real product codes avoid them too


def font_dir() -> Path:
    """The folder with the DejaVu fonts: matplotlib's bundled copy, else the system one."""
    spec = importlib.util.find_spec("matplotlib")  # locates without importing matplotlib
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"
        if (bundled / FONT_FILES[0]).is_file():
            return bundled
    if (SYSTEM_FONT_DIR / FONT_FILES[0]).is_file():
        return SYSTEM_FONT_DIR
    raise InputError(
        f"no DejaVu fonts found (neither matplotlib's mpl-data/fonts/ttf nor {SYSTEM_FONT_DIR}): "
        "pip install matplotlib, or install the DejaVu fonts (apt-get install fonts-dejavu-core)"
    )


def _rng(seed: int, stream: str, *key: int) -> np.random.Generator:
    # crc32 rather than hash(): str hashes are salted per process.
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), *key])


# ----------------------------------------------------------------------------- text


def _word(rng: np.random.Generator, case: str) -> str:
    word = str(rng.choice(WORDS))
    return {"lower": word, "title": word.title(), "upper": word.upper()}[case]


def _amount(rng: np.random.Generator) -> str:
    value = float(10 ** rng.uniform(-0.3, 5.0))  # log-uniform: 0.50 .. 100,000.00
    text = f"{value:,.2f}" if rng.random() < 0.6 else f"{value:.2f}"
    return str(rng.choice(CURRENCIES)) + text


def _date(rng: np.random.Generator) -> str:
    y, m, d = int(rng.integers(2015, 2031)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    style = int(rng.integers(4))
    return [f"{y}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y}", f"{MONTHS[m - 1]} {d}, {y}",
            f"{d:02d}.{m:02d}.{y}"][style]


def _code(rng: np.random.Generator) -> str:
    letters = "".join(rng.choice(list(UPPER), size=int(rng.integers(1, 4))))
    digits = str(int(rng.integers(10, 100000)))
    return [f"{letters}-{digits}", f"{letters}{digits}", f"{digits}-{letters}",
            f"#{letters}{digits}"][int(rng.integers(4))]


def _phrase(rng: np.random.Generator, lo: int, hi: int) -> str:
    case = str(rng.choice(["lower", "title", "title", "upper"]))
    words = [_word(rng, case) for _ in range(int(rng.integers(lo, hi + 1)))]
    if case == "lower" and rng.random() < 0.5:  # sentence case
        words[0] = words[0].title()
    return " ".join(words)


def _line(rng: np.random.Generator) -> str:
    """One line in one of several styles: invoice fields, dates, amounts, codes, prose."""
    kind = int(rng.integers(8))
    if kind == 0:
        return f"{rng.choice(['Invoice No.', 'Order', 'Ref:', 'Receipt #'])} {_code(rng)}"
    if kind == 1:
        return f"{rng.choice(['Date:', 'Due', 'Issued', 'Shipped'])} {_date(rng)}"
    if kind == 2:
        label = rng.choice(["Total", "Subtotal", "Tax", "Balance due", "Paid", "Amount:"])
        return f"{label} {_amount(rng)}"
    if kind == 3:
        return f"{int(rng.integers(1, 25))} x {_phrase(rng, 1, 3)} {_amount(rng)}"
    if kind == 4:
        return f"{rng.choice(['SKU', 'Part No.', 'Item', 'Lot'])} {_code(rng)} {_phrase(rng, 1, 2)}"
    if kind == 5:
        return f"{int(rng.integers(1, 999))} {_phrase(rng, 1, 2)} {rng.choice(['Street', 'Road', 'Ave.'])}"
    if kind == 6:
        return f"{_phrase(rng, 1, 3)}: {int(rng.integers(0, 10000))}"
    return _phrase(rng, 2, 6)


def generate_lines(
    n: int,
    seed: int = 0,
    stream: str = "val",
    exclude: Collection[str] = (),
    charset: Collection[str] | None = None,
) -> list[str]:
    """``n`` distinct text lines of 8-40 characters, none of them in ``exclude``.

    ``stream`` separates independent sequences for the same seed ("calib", "val", ...).
    With ``charset`` given, every character must be in it (space is always allowed: the
    recognizer's extra last class), else ``InputError``.
    """
    rng = _rng(seed, stream, 0)
    excluded, lines = set(exclude), []
    seen: set[str] = set()
    while len(lines) < n:
        line = _line(rng)
        if MIN_CHARS <= len(line) <= MAX_CHARS and line not in seen and line not in excluded:
            seen.add(line)
            lines.append(line)
    if charset is not None:
        allowed = set(charset) | {" "}
        missing = sorted({ch for line in lines for ch in line} - allowed)
        if missing:
            raise InputError(
                f"the model's charset lacks characters the text generator uses: {missing}; "
                "use the PP-OCRv4 recognizer from rapidocr-onnxruntime==1.4.4"
            )
    return lines


# ----------------------------------------------------------------------------- pixels


@functools.lru_cache(maxsize=128)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def render_line(text: str, rng: np.random.Generator, fonts: Path | None = None) -> Image.Image:
    """Render ``text`` as an RGB crop like a text detector would hand to the recognizer."""
    fonts = fonts or font_dir()
    font = _font(fonts / str(rng.choice(FONT_FILES)), int(rng.integers(FONT_SIZES[0], FONT_SIZES[1] + 1)))
    # Paper-like background and dark ink, each with a slight colour cast so that the RGB->BGR
    # swap in preprocessing is exercised rather than invisible on pure gray.
    bg = np.clip(int(rng.integers(205, 256)) + rng.integers(-8, 9, size=3), 0, 255)
    ink = np.clip(int(rng.integers(0, 70)) + rng.integers(-10, 11, size=3), 0, 255)
    bg_rgb, ink_rgb = tuple(int(v) for v in bg), tuple(int(v) for v in ink)

    # Height from the font's ascent+descent, not the glyphs' bbox, so "ace" and "Type"
    # are scaled alike, as a detector box around a line of text would be.
    ascent, descent = font.getmetrics()
    left, _, right, _ = font.getbbox(text)
    size = font.size
    pad_l, pad_r = (int(v) for v in rng.integers(2, max(3, size // 2), size=2))
    pad_t, pad_b = (int(v) for v in rng.integers(1, max(2, size // 6), size=2))
    img = Image.new("RGB", (right - left + pad_l + pad_r, ascent + descent + pad_t + pad_b), bg_rgb)
    ImageDraw.Draw(img).text((pad_l - left, pad_t), text, font=font, fill=ink_rgb)

    angle = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    img = img.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=bg_rgb)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 0.9))))
    if rng.random() < 0.5:
        pixels = np.asarray(img, dtype=np.float32)
        pixels = pixels + rng.normal(0.0, rng.uniform(2.0, 8.0), size=pixels.shape)
        img = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return img


def render_lines(texts: Sequence[str], seed: int = 0, stream: str = "val") -> list[Image.Image]:
    """Render each text with its own generator from ``(seed, stream, index)``."""
    fonts = font_dir()
    return [render_line(text, _rng(seed, stream, 1, i), fonts) for i, text in enumerate(texts)]
