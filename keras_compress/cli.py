"""The `keras-compress` command: `python -m keras_compress.cli`.

The console script runs `keras_compress_cli.main` (a top-level module that
parses arguments before Keras loads); this path keeps working.
"""

import sys

from keras_compress_cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
