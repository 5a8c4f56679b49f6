"""Lets Beam runners ship seqpipe to their workers: `--setup_file ./setup.py`.

Beam builds an sdist from this file and installs it on every worker. All
metadata (name, version, dependencies, packages) lives in pyproject.toml;
this shim only hands over to it.
"""

from setuptools import setup

setup()
