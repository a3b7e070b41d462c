"""Progress output: a bar with rate and ETA on a terminal, a line per 10% in a log."""

import io

from perturbglm.progress import Progress


def test_log_lines_every_tenth():
    out = io.StringIO()
    p = Progress(out, tty=False)
    for done in range(0, 101):
        p("reading", done, 100, "cells")
    p("fitting", 0, 4, "steps")
    p("fitting", 4, 4, "steps")
    lines = out.getvalue().splitlines()
    reading = [x for x in lines if x.startswith("reading:")]
    assert [x.split()[1] for x in reading] == [f"{10 * i}%" for i in range(1, 11)]
    assert "100/100 cells" in reading[-1] and " in " in reading[-1]
    assert lines[-1].startswith("fitting: 100%")
    assert "\r" not in out.getvalue()


def test_terminal_bar_with_rate_and_eta():
    out = io.StringIO()
    p = Progress(out, tty=True)
    p("reading", 0, 1000, "cells")
    p.last = -1.0                       # let the next update through the 0.1 s throttle
    p.t0 -= 2.0                         # as if 2 s had passed
    p("reading", 500, 1000, "cells")
    text = out.getvalue()
    assert text.startswith("\rreading")
    assert "[##############--------------]  50.0%" in text
    assert "cells/s" in text and "ETA 2s" in text
    p.close()
    assert out.getvalue().endswith("\n")
