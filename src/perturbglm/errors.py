"""The exceptions the command line turns into one line: a refusal, a full disk."""


class InputError(ValueError):
    """Input the analysis cannot run on; the message names the problem and the fix."""


class DiskFull(Exception):
    """The disk a run writes to is full; the message says which, how much space the run
    needs, and that --resume continues once space is freed."""
