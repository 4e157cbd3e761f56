"""Sphinx configuration of the fastlstm documentation.

Build: ``sphinx-build -W -b html docs docs/_build/html``; run the examples:
``sphinx-build -W -b doctest docs docs/_build/doctest``. The API reference is generated
from the docstrings of every public module of the package (autosummary, recursive), so a
new module appears without editing these pages.
"""
import fastlstm

project = "fastlstm"
author = "fastlstm developers"
copyright = "2026, fastlstm developers"
release = fastlstm.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext"}   # Markdown only through explicit includes
exclude_patterns = ["_build", "_static"]
templates_path = ["_templates"]
default_role = "literal"
nitpicky = False

# API reference: autosummary writes one page per public object into api/generated.
autosummary_generate = True
autosummary_ignore_module_all = False   # a module's __all__, when it has one, decides
autosummary_imported_members = False
autodoc_typehints = "none"              # types are in the numpydoc sections
autodoc_member_order = "bysource"
autodoc_default_options = {"inherited-members": False}
numpydoc_show_class_members = False     # the class template lists the members
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
numpydoc_validation_checks = set()

# Executed examples: every `>>>` block and every doctest/testcode directive, docstrings
# included, runs in `sphinx-build -b doctest`.
doctest_global_setup = """
import os, shutil, tempfile
import numpy as np
import fastlstm as fl
np.set_printoptions(precision=4, suppress=True)
_doctest_cwd = os.getcwd()
_doctest_dir = tempfile.mkdtemp(prefix="fastlstm-doctest-")   # files the examples write
os.chdir(_doctest_dir)
"""
doctest_global_cleanup = """
os.chdir(_doctest_cwd)
shutil.rmtree(_doctest_dir, ignore_errors=True)
"""
doctest_default_flags = (__import__("doctest").ELLIPSIS
                         | __import__("doctest").NORMALIZE_WHITESPACE)

html_theme = "furo"
html_title = f"fastlstm {release}"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": True}
myst_enable_extensions = []


def skip_member(app, what, name, obj, skip, options):
    """Leave out scikit-learn's generated metadata-routing methods (set_fit_request, ...)."""
    if name.startswith("set_") and name.endswith("_request"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", skip_member)
