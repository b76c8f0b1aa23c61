"""`python run.py ...` is the `gnlorp` command from a checkout: see gnlorp/cli.py (USAGE) or `python run.py --help`."""

from gnlorp.cli import main

if __name__ == "__main__":
    main()
