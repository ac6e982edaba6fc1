"""`python -m tests.infra.train_cli ARGS...` is `llama2 ARGS...` knowing one pipeline, `train`
(tests/infra/train_pipeline.py): a real CLI process for the tests that signal it mid-training."""

from __future__ import annotations

import sys

from pipelines import registry
from pipelines.cli import main
from tests.infra.train_pipeline import TRAIN

if __name__ == "__main__":
    registry.pipeline_specs = lambda: {TRAIN.name: TRAIN}
    sys.exit(main(sys.argv[1:]))
