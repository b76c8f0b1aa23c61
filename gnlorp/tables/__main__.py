"""python -m gnlorp.tables (what `make tables` runs)."""

from . import main

main()
