"""Reading a pickle of parameters without running code from it.

A pickle names Python callables ("globals") that the loader calls: a file whose payload names
os.system runs a shell command the moment plain pickle.load reads it. `load_pickle` admits only
the globals that plain containers and NumPy arrays need:
    collections.OrderedDict                                  (dict, list, tuple, str, int, float,
    builtins: dict, list, tuple, set, frozenset, str, int,    bool and None need no global)
        float, bool, complex, bytes, bytearray
    _codecs.encode                                           (bytes in protocol 2 pickles)
    numpy.ndarray, numpy.dtype,
    numpy{,._}core.multiarray._reconstruct / .scalar         (arrays, NumPy scalars; NumPy 1 and 2)
    numpy{,._}core.numeric._frombuffer                       (arrays in protocol 5 pickles)
and refuses every other global with a ValueError naming it, before calling anything. `trust=True`
is plain pickle.load, for a file whose origin you trust (`iclgd convert --trust-pickle`).
"""
import pickle

ALLOWED_GLOBALS = frozenset(
    [("collections", "OrderedDict"), ("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")]
    + [("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "str", "int", "float",
                                  "bool", "complex", "bytes", "bytearray")]
    + [(f"numpy.{core}.multiarray", n) for core in ("core", "_core") for n in ("_reconstruct", "scalar")]
    + [(f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")])


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, label):
        super().__init__(file)
        self.label = label

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise ValueError(f"{self.label}: refused to load global '{module}.{name}' from a pickle "
                             f"(only containers and NumPy arrays are allowed; pass --trust-pickle "
                             f"for a file you trust)")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise ValueError(f"{self.label}: refused a persistent id in a pickle (only containers and "
                         f"NumPy arrays are allowed; pass --trust-pickle for a file you trust)")


def load_pickle(path, trust=False, label=None):
    """The object pickled in `path`, through the restricted unpickler unless trust=True.

    Errors are ValueErrors of one line starting with `label` (default the path)."""
    label = label or str(path)
    with open(path, "rb") as f:
        try:
            return pickle.load(f) if trust else _RestrictedUnpickler(f, label).load()
        except ValueError as e:
            if str(e).startswith(label):
                raise
            raise ValueError(f"{label}: not a readable pickle ({_one_line(e)})") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
                KeyError, TypeError, MemoryError) as e:
            raise ValueError(f"{label}: not a readable pickle ({type(e).__name__}: "
                             f"{_one_line(e)})") from None


def _one_line(error):
    return " ".join(str(error).split())
