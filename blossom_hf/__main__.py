"""``python -m blossom_hf <command> ...`` is ``blossom-hf <command> ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
