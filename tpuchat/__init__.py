"""tpuchat: chat with LLMs compiled to Sophgo BM1684X bmodels.

Importing the package is cheap and never touches the device runtime.
"""

__version__ = "0.1.0"
