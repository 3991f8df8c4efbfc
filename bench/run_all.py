"""``make bench``: every workload, plots into docs/img (see bench/cli.py)."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main(["all", "--plots", "docs/img", *sys.argv[1:]]))
