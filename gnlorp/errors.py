"""One exception type for everything the user can fix: bad config, missing data, bad input files."""


class UserError(Exception):
    """A problem with the user's input. The message is one sentence naming the problem and the fix;
    run.py prints it without a traceback and exits with status 2."""


def os_error_cause(exc: OSError, setting: str) -> tuple[str, str]:
    """(the cause of a failed write in words, what the user can do about it) for an OSError; `setting`
    names the config key that chooses the folder."""
    import errno
    import os

    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        cause = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        return cause, f"free disk space or set {setting} to a disk with room"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return os.strerror(code).lower(), f"make the folder writable or set {setting} to a writable one"
    if code == errno.ENAMETOOLONG:
        return "file name too long", f"use a shorter run name or {setting}"
    if code is not None:
        return os.strerror(code).lower(), f"check the folder or set {setting} to another one"
    return str(exc) or type(exc).__name__, f"check the folder or set {setting} to another one"
