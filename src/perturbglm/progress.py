"""Progress: a bar with rate and ETA on a terminal, a plain line every ~10% in a log."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Call with (phase, done, total, unit) as work advances; a new phase starts a new line."""

    def __init__(self, stream=None, tty: bool | None = None, width: int = 28):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self.phase = None
        self.t0 = 0.0
        self.last = 0.0
        self.next_tenth = 1

    def __call__(self, phase: str, done: int, total: int, unit: str) -> None:
        now = time.perf_counter()
        if phase != self.phase:
            self.close()
            self.phase, self.t0, self.last, self.next_tenth = phase, now, 0.0, 1
        frac = done / total if total else 1.0
        elapsed = now - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("nan")
        speed = (f"{rate:,.0f} {unit}/s" if rate >= 10 else
                 f"{rate:.2g} {unit}/s" if rate >= 0.1 or rate == 0 else
                 f"{1 / rate:,.0f} s per {unit.rstrip('s')}")
        tail = (f"{done:,}/{total:,} {unit}  {speed}  "
                + (f"in {_duration(elapsed)}" if done >= total
                   else f"ETA {_duration(eta)}" if eta == eta else "ETA --"))
        if self.tty:
            if now - self.last < 0.1 and done < total:
                return
            self.last = now
            fill = int(self.width * frac)
            bar = "#" * fill + "-" * (self.width - fill)
            self.stream.write(f"\r{phase:<9} [{bar}] {100 * frac:5.1f}%  {tail}\033[K")
        elif frac * 10 >= self.next_tenth or done >= total:
            self.next_tenth = int(frac * 10) + 1
            self.stream.write(f"{phase}: {100 * frac:.0f}%  {tail}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.phase is not None:
            self.stream.write("\n")
            self.stream.flush()
        self.phase = None
