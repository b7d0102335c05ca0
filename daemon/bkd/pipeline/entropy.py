"""Does a file's content look random (encrypted, compressed)? Shannon entropy
of a small sample: two blocks, the start and the middle, each judged on its
own so that a file encrypted only in part (its start, or every other
block) still shows, and a header (PDF, Office) does not hide the rest.

Random data has close to 8 bits per byte; text 4–5, code and binaries 5–6.5,
base64 about 6. A block of n bytes measures low by about 255 / (2 n ln 2)
bits even when random (Miller–Madow), which is added back. Counting bytes
costs about 30 ns a byte in Python, so the blocks are small (what is read
while the file is hashed costs no extra read), a block whose few distinct
bytes alone keep it below ORDINARY is not counted (text: a set of 40–70
byte values, 5 µs), and the blocks are judged only until one decides."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable

BLOCK = 1024  # bytes per block
MIN_BLOCK = 256  # a smaller sample cannot be told from text: not judged
RANDOM = 7.2  # bits per byte, bias added back: at or above, the block looks random (256 random bytes: 7.4–8)
ORDINARY = 7.0  # below this in every block: the content looks ordinary (neither: in between)
_C_LOG2_C = [0.0] + [c * math.log2(c) for c in range(1, BLOCK + 1)]


def ranges(size: int) -> list[tuple[int, int]]:
    """The byte ranges sampled from a file of size: its start, and a block in
    the middle when the file is long enough to have one apart from the start."""
    if size == 0:
        return []
    first = (0, min(size, BLOCK))
    if size < 2 * BLOCK:
        return [first] if size <= BLOCK else [first, (BLOCK, size)]
    middle = max(BLOCK, size // 2 - BLOCK // 2)
    return [first, (middle, min(size, middle + BLOCK))]


def bits(block: bytes) -> float:
    """Shannon entropy of block in bits per byte, with the small-sample bias
    added back; for a block with so few distinct bytes that it cannot reach
    ORDINARY, that bound instead (it decides the same)."""
    n = len(block)
    if n == 0:
        return 0.0
    distinct = len(set(block))
    bound = math.log2(distinct) + (distinct - 1) / (2 * n * math.log(2))
    if bound < ORDINARY:
        return bound
    counts = Counter(block).values()
    if n <= BLOCK:  # c·log2(c) from a table, summed in C
        entropy = math.log2(n) - sum(map(_C_LOG2_C.__getitem__, counts)) / n
    else:
        entropy = -sum(c / n * math.log2(c / n) for c in counts)
    return min(8.0, entropy + (len(counts) - 1) / (2 * n * math.log(2)))


def score(blocks: Iterable[bytes], enough: float = RANDOM) -> float | None:
    """The entropy of the most random-looking block large enough to judge
    (the first at or above `enough` decides: the others are not read); None
    if none is large enough."""
    best = None
    for block in blocks:
        if len(block) >= MIN_BLOCK:
            value = bits(block)
            best = value if best is None else max(best, value)
            if best >= enough:
                break
    return None if best is None else round(best, 3)


def sample(fd: int, size: int, enough: float = RANDOM) -> float | None:
    """score of what fd (a regular file of size) holds in the sampled ranges, read as needed."""
    return score((os.pread(fd, end - start, start) for start, end in ranges(size)), enough)


class Collector:
    """Gathers the sampled ranges of a file from the chunks a reader passes
    by in order (the hashing loop), without a read of its own."""

    def __init__(self, size: int):
        self.wanted = ranges(size)
        self.parts: list[list[bytes]] = [[] for _ in self.wanted]

    def feed(self, position: int, chunk) -> None:
        end = position + len(chunk)
        for index, (start, stop) in enumerate(self.wanted):
            low, high = max(start, position), min(stop, end)
            if low < high:
                self.parts[index].append(bytes(chunk[low - position:high - position]))

    def score(self) -> float | None:
        return score(b"".join(part) for part in self.parts)


def looks_random(value: float | None) -> bool:
    return value is not None and value >= RANDOM


def looks_ordinary(value: float | None) -> bool:
    return value is not None and value < ORDINARY
