"""``python -m spikelm`` (and ``torchrun -m spikelm``): the ``spikelm`` command line."""

import sys

from .cli import entry

if __name__ == "__main__":
    sys.exit(entry())
