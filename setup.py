# setuptools needs setup.py for cffi_modules: a pyproject-only build silently
# builds no extension (see docs/architecture.md, "Build").
# cffi compiles the extension against the stable ABI (spikewire/_spikewire_c.abi3.so);
# py_limited_api tags the wheel to match (cp311-abi3: Python >= 3.11, as requires-python).
from setuptools import setup

setup(cffi_modules=["runtime/_build.py:ffibuilder"],
      options={"bdist_wheel": {"py_limited_api": "cp311"}})
