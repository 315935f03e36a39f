import sys

from bench.app.cli import main

sys.exit(main())
