"""Sphinx configuration for deepinv-mol (build: ``sphinx-build -W docs docs/_build/html``; ``-D plot_gallery=0`` skips running
the tutorials: builds with no warning on 2026-12-03, sphinx 9, sphinx-gallery, pydata-sphinx-theme)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
from deepinv_mol._version import __version__  # noqa: E402

project = "deepinv-mol"
author = "deepinv-mol developers"
release = version = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_gallery.gen_gallery",
]
autosummary_generate = True
exclude_patterns = ["_build", "examples/README.rst"]  # the gallery header, read by sphinx-gallery itself
autodoc_member_order = "bysource"
html_theme = "pydata_sphinx_theme"

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/demo_",
    "ignore_pattern": r"__init__\.py",
}
