"""An unpickler that rebuilds plain numpy arrays and nothing else.

Pickles can run arbitrary code on load; data files are read with this instead, which
refuses every global except the few that numpy's array pickling uses.
"""

import codecs
import io
import pickle

import numpy as np

try:  # numpy >= 2 moved the array internals to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

__all__ = ["ArrayUnpickler", "load_arrays"]

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes the raw bytes of an array in protocol 2
}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler restricted to numpy arrays, tuples, lists, dicts, numbers and strings."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only plain numpy arrays are allowed"
            )
        if module == "_codecs":
            return codecs.encode
        return _reconstruct if name == "_reconstruct" else getattr(np, name)


def load_arrays(data: bytes):
    """Unpickles ``data`` (Python 2 pickles read with latin-1 strings) allowing arrays only."""
    return ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
