"""One exception type for everything the user can fix: bad config, missing data, bad input files."""


class UserError(Exception):
    """A problem with the user's input. The message is one sentence naming the problem and the fix;
    run.py prints it without a traceback and exits with status 2."""
