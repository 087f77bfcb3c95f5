"""Builds the C data plane with cffi; everything else about the package is in pyproject.toml."""
from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
