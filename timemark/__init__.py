"""timemark: find when things happen in long videos.

This package holds only the command line; the service lives in `api/`, `workers/` and `core/`,
the model in `model_runtime/` and `kernels/` (see README and DESIGN).
"""
