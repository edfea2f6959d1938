"""``python -m atedm_kernels``: the command line (see :mod:`atedm_kernels.tools.cli`)."""

from .tools.cli import main

raise SystemExit(main())
