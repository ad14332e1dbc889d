"""Run every benchmark in this folder, one after another, in one process tree (`make bench`).

Each benchmark prints its own table of ratios against the peer measured in the same run and
keeps its section of RESULTS.md current; this script only sequences them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Libraries and generators, not benchmarks. corpus.py (the public corpus, zero-config commands)
# runs like any other script; corpus_models.py only materialises the models it reads.
SKIP = {"run_all.py", "make_big_model.py", "corpus_models.py"}


def main() -> int:
    failed = []
    for script in sorted(HERE.glob("*.py")):
        if script.name in SKIP or script.name.startswith("_"):
            continue
        print(f"== {script.name}", flush=True)
        if subprocess.call([sys.executable, str(script)], cwd=HERE.parent) != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
