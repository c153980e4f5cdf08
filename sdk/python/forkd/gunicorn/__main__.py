"""python3 -m forkd.gunicorn [GUNICORN OPTIONS] module:app: see forkd.gunicorn."""

import sys

from forkd.gunicorn import main

sys.exit(main())
