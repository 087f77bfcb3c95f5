import sys

from mooncake_master.main import main

sys.exit(main())
