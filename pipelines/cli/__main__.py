"""`python -m pipelines.cli`: the entry point a submitted Ray job runs (the same as `llama2`)."""

import sys

from pipelines.cli import main

sys.exit(main())
