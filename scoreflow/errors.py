"""The one exception type the command-line scripts turn into a one-line error."""


class ScoreFlowError(Exception):
    """A user-facing failure: bad input, missing stage, corrupt file.

    The message is a single line naming the file or field and what was expected;
    the CLIs print it as ``error: <message>`` and exit with status 2.
    """
