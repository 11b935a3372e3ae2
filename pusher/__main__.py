"""`python -m pusher` is the same as the `libvirt-pusher` command."""

import sys

from pusher.cli import main

sys.exit(main())
