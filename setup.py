# setuptools needs setup.py for cffi_modules: a pyproject-only build silently
# builds no extension (see docs/architecture.md, "Build").
from setuptools import setup

setup(cffi_modules=["runtime/_build.py:ffibuilder"])
