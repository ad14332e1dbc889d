"""Task metric of the sample: character error rate (CER) of CTC greedy decoding.

The validation stage calls ``cer(outputs, labels, context)`` and reads ``NAME``,
``HIGHER_IS_BETTER`` and ``UNIT``. The charset comes from the reference model's metadata
(key ``character``), because a rewritten or quantized candidate may have lost it.

Output classes of the PP-OCRv4 recognizer (6625 for the 6623-entry charset):
0 is the CTC blank, ``i`` in 1..len(charset) is ``charset[i-1]``, and one more class at the
end is a space, which the metadata does not list (RapidOCR appends it the same way).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from optimizer.errors import InputError

NAME = "cer"
HIGHER_IS_BETTER = False
UNIT = "%"

CHARSET_KEY = "character"
BLANK = 0


def charset_from_metadata(metadata: Mapping[str, str]) -> list[str]:
    """The class labels 1..C-1: the metadata's newline-separated charset plus a final space."""
    if CHARSET_KEY not in metadata:
        raise InputError(
            f"model metadata has no '{CHARSET_KEY}' entry (keys: {sorted(metadata)}); "
            "pass the metadata of the original PP-OCR recognizer as the reference"
        )
    # split("\n"), not splitlines(): the latter would also split on exotic separators such
    # as U+2028 if the charset ever held one. For the 1.4.4 model both give 6623 entries.
    chars = metadata[CHARSET_KEY].split("\n")
    if chars and chars[-1] == "":  # tolerate a trailing newline
        chars.pop()
    return chars + [" "]


def ctc_greedy_decode(probs: np.ndarray, charset: Sequence[str]) -> str:
    """Best path: argmax per time step, collapse repeats, drop blanks, map to characters.

    ``probs`` is ``[T, C]`` (a leading batch dimension of 1 is accepted). ``charset`` maps
    class ``i >= 1`` to ``charset[i-1]``; if it lacks the final space (``C - 2`` entries,
    straight from the metadata), the last class still decodes as a space.
    """
    probs = np.asarray(probs)
    if probs.ndim == 3 and probs.shape[0] == 1:
        probs = probs[0]
    if probs.ndim != 2:
        raise InputError(f"CTC output must be [T, C] or [1, T, C], got shape {probs.shape}")
    num_classes = probs.shape[1]
    labels = list(charset)
    if len(labels) == num_classes - 2:
        labels.append(" ")
    if len(labels) != num_classes - 1:
        raise InputError(
            f"charset has {len(charset)} entries but the output has {num_classes} classes; "
            "expected classes = charset + blank (+ space): use the charset of this model"
        )
    best = probs.argmax(axis=1)
    keep = best != BLANK
    keep[1:] &= best[1:] != best[:-1]  # a repeat is merged unless a blank separates it
    return "".join(labels[i - 1] for i in best[keep])


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute each cost 1), two-row DP."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def character_error_rate(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Total edit distance over total reference characters (a fraction, not percent)."""
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions but {len(references)} references; they must pair up")
    total = sum(len(r) for r in references)
    if total == 0:
        raise InputError("the references hold no characters; CER is undefined without ground-truth text")
    return sum(edit_distance(p, r) for p, r in zip(predictions, references)) / total


def _ctc_output(output: Mapping[str, np.ndarray], num_classes: int) -> np.ndarray:
    """The model's probability tensor: the only output, or the one with the right class count."""
    if len(output) == 1:
        return next(iter(output.values()))
    matches = [v for v in output.values() if np.ndim(v) >= 2 and np.shape(v)[-1] == num_classes]
    if len(matches) != 1:
        raise InputError(
            f"cannot tell the CTC output among {sorted(output)}: expected exactly one with "
            f"{num_classes} classes in its last dimension"
        )
    return matches[0]


def cer(outputs: Sequence[Mapping[str, np.ndarray]], labels: Sequence[str], context: Any) -> float:
    """Plugin entry point: CER in percent of batch-1 model outputs against their texts."""
    if len(outputs) != len(labels):
        raise InputError(f"{len(outputs)} model outputs but {len(labels)} labels; each sample needs one label")
    charset = charset_from_metadata(context.metadata)
    num_classes = len(charset) + 1
    # Strip both ends: the model reads a wide blank margin of the crop as a space (about
    # half of our rendered lines gain one), and margins are not text. Spaces inside a line
    # still count; PaddleOCR's own RecMetric drops all spaces by default, which hides those.
    predictions = [ctc_greedy_decode(_ctc_output(o, num_classes), charset).strip() for o in outputs]
    return 100.0 * character_error_rate(predictions, [label.strip() for label in labels])
