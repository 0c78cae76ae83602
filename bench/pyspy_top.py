"""Summarize py-spy collapsed stacks (`py-spy record --format raw --function`).

Usage: python bench/pyspy_top.py FILE.raw [N]

Prints the N (default 20) functions with the most own time (the sample's leaf frame) and
the most inclusive time (anywhere on the stack, counted once per sample), as % of samples.
Samples where the process was idle (py-spy records none with --idle off) are not counted,
so percentages are of the time the event loop was busy.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def main(path: str, n: int) -> None:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [short(fr) for fr in stack.split(";") if not fr.startswith("process ")]
            frames = [fr for fr in frames if not fr.startswith("thread ")]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for fr in set(frames):
                incl[fr] += count
    print(f"{total} samples")
    for title, counter in (("own time", own), ("inclusive time", incl)):
        print(f"\ntop {n} by {title}:")
        for func, count in counter.most_common(n):
            print(f"  {100 * count / total:5.1f}%  {func}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 20)
