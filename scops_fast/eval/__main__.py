import sys

from scops_fast.eval.cli import main

sys.exit(main())
