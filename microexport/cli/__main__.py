"""`python -m microexport.cli`: the `microexport` command."""

import sys

from microexport.cli import main

sys.exit(main())
