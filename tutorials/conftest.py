"""pytest runs the tutorial notebooks with nbmake (`addopts` in setup.cfg), in FAST mode."""

import os

# Each notebook reads this in its first cell; the kernels nbmake starts inherit
# this process's environment. Export KC_TUTORIAL_FAST=0 for full-length runs.
os.environ.setdefault("KC_TUTORIAL_FAST", "1")
