import sys

from scops_fast.cli.train import main

sys.exit(main())
