"""``python -m atedm_kernels``: the command line (see :mod:`atedm_kernels.cli`)."""

from .cli import main

raise SystemExit(main())
