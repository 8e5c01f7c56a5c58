"""animevae: turn a folder of anime-style faces into a VAE, then generate and denoise with it.

Importing the package is cheap: torch and onnxruntime load only in the modules that need them.
"""

__version__ = "0.1.0"

# Version of the files animevae writes (checkpoints, ONNX metadata, data sets). Bump on incompatible changes.
FORMAT_VERSION = 1
