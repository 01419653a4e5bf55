# cffi_modules cannot be expressed in pyproject.toml yet; everything else lives there.
from setuptools import setup

setup(cffi_modules=["native/build_ffi.py:ffibuilder"])
