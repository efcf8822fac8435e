"""The one compiled piece, optional: nandoctor._fused (a chunk's CRC-32 and segment ORs in one pass).

Everything else is in pyproject.toml. Where no C compiler is at hand the build skips the extension
(``optional=True``) and the scan keeps its two passes (nandoctor/kernels/fused.py says which runs).
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-std=c99"]
setup(ext_modules=[Extension("nandoctor._fused", ["nandoctor/_fused.c"], optional=True, extra_compile_args=flags)])
