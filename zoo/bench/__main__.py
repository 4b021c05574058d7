"""A bench worker process: `python -m zoo.bench JOB.json OUT.json` (see `zoo.bench.workers`)."""

import sys

from zoo.bench.workers import main

sys.exit(main(sys.argv[1:]))
