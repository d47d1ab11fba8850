"""``python -m igrpo_megatron.demo``: the demo's entry point (see ``run.py``)."""
import sys

from igrpo_megatron.demo.run import main

sys.exit(main())
