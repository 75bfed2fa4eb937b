"""`python -m config_watch`: the operator's tool (config_watch/_cli.py)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
