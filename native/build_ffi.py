"""cffi build script (API mode): compiles the shim into tpuchat._shim.

The Python-visible declarations are the part of tpuchat_shim.h between the
cdef markers, so the header stays the single source of truth.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _cdef_text():
    with open(os.path.join(HERE, "tpuchat_shim.h"), encoding="utf-8") as f:
        text = f.read()
    body = text.split("/* cdef-begin */", 1)[1].split("/* cdef-end */", 1)[0]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)  # cffi wants no comments
    return body


ffibuilder = FFI()
ffibuilder.cdef(_cdef_text())
ffibuilder.set_source(
    "tpuchat._shim",
    '#include "tpuchat_shim.h"',
    sources=sorted(os.path.relpath(os.path.join(HERE, f)) for f in os.listdir(HERE) if f.endswith(".c")),
    include_dirs=[os.path.relpath(HERE)],
    libraries=["dl", "m"],
    depends=sorted(os.path.relpath(os.path.join(HERE, f)) for f in os.listdir(HERE) if f.endswith(".h")),
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
