"""One exception type for everything the user can fix: bad config, missing data, bad input files.

UserError is defined at the package root (gnlorp/__init__.py) so that the optimizer package, which imports
nothing else of gnlorp, raises the same class; it is imported here, beside the rest of the error handling."""

from . import UserError


def first_line(exc: BaseException) -> str:
    """An exception's message reduced to its first non-empty line (its type's name if it has none)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


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


class ArgumentError(UserError, ValueError):
    """A bad argument of a Python API (e.g. gnlorp.integrations.transformers): a ValueError for the caller, and a
    UserError for the commands."""


EXIT_USER_ERROR = 2


def one_line_argument_parser(**kwargs):
    """An argparse.ArgumentParser whose usage errors are one `error:` line (exit 2), like every other input error
    of the package's commands."""
    import argparse
    import sys

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # argparse prints the usage and the message on two lines
            print(f"error: {message}; `{self.prog} --help` lists the options.", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return Parser(**kwargs)


# the import names of gnlorp[runner]'s packages (pyproject.toml): a command that finds one missing says which extra
RUNNER_MODULES = ("hydra", "omegaconf", "transformers", "datasets", "evaluate", "wandb", "peft", "sklearn", "scipy",
                  "sentencepiece", "tqdm", "psutil", "matplotlib", "bitsandbytes")


def missing_extra(exc: ImportError) -> str | None:
    """The one line for a runner package that is not installed (None for any other import error)."""
    top = (getattr(exc, "name", None) or "").split(".")[0]
    if isinstance(exc, ModuleNotFoundError) and top in RUNNER_MODULES:
        return (f"this command needs the runner's packages, and {top} is not installed (the base install holds the "
                f"optimizers only); pip install 'gnlorp[runner]'.")
    return None


def exit_if_extra_missing(exc: ImportError) -> None:
    """Print missing_extra's line and exit 2, or re-raise an import error of any other kind."""
    import os
    import sys

    line = missing_extra(exc)
    if line is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"error: {line}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run_command(main, argv=None, what: str = "") -> None:
    """Run a command's main(argv): a UserError, or an OSError writing or reading the user's files, ends in one
    `error:` line and exit 2 (HYDRA_FULL_ERROR=1 shows the traceback, as for run.py)."""
    import os
    import sys

    try:
        main(argv)
    except ImportError as exc:
        exit_if_extra_missing(exc)
    except (UserError, OSError) as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if isinstance(exc, UserError):
            text = str(exc)
        else:
            cause, fix = os_error_cause(exc, what or "the path")
            text = f"{exc.filename or what} cannot be used ({cause}); {fix}."
        print(f"error: {text}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
