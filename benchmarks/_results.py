"""The one writer of benchmarks/RESULTS.md: each benchmark replaces its own section."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(name: str, body: str, path: Path = RESULTS) -> Path:
    """Put ``## name`` followed by ``body`` in place of that section (or append it), atomically."""
    from optimizer.model import write_text_atomic

    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    section = f"## {name}\n\n{body.strip()}\n"
    start = text.find(f"## {name}\n")
    if start == -1:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end != -1 else "")
    return write_text_atomic(path, text)
