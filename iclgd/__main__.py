"""`python -m iclgd ...`: the same command line as the `iclgd` console script."""
import sys

from iclgd.cli import main

sys.exit(main())
