"""``python -m bench [--quick] [--out DIR] [--only SCENARIO,...]``: see bench/runner.py."""

import sys

from bench.runner import main

sys.exit(main())
