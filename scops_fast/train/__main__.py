import sys

from scops_fast.train.cli import main

sys.exit(main())
