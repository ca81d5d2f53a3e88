# A package, so that pytest imports tutorials/conftest.py as `tutorials.conftest`:
# as a plain `conftest` module it would shadow tests/conftest.py, which the
# tests import by that name (`from conftest import small_cnn`).
