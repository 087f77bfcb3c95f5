import sys

from mooncake_worker.main import main

sys.exit(main())
