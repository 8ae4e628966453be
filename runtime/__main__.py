"""``python -m spikewire``: the same command line as the ``spikewire`` script (runtime/cli.py)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
