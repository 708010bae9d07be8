import sys

from autotune.entry import main

sys.exit(main())
