"""Everything that touches the device: finding libsophon, the cffi binding
over the C shim, bmodel checks, the engine and its worker process.

Nothing here is imported by `import tpuchat`; the runtime library itself is
loaded only when a model is opened.
"""
