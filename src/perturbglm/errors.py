"""The one exception the command line turns into a one-line refusal."""


class InputError(ValueError):
    """Input the analysis cannot run on; the message names the problem and the fix."""
