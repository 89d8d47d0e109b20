import sys

from mope_lightning.cli import main

sys.exit(main())
