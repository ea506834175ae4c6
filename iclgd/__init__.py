"""iclgd, the application: the command line, the training loop, one experiment module per figure,
results, plots and interop (the exchange format, crosscheck, convert).

It sits on the two floors below it: `refimpl` (the float64 NumPy oracle) and `kernels` (the same
functions, fast). Neither of them imports this package.
"""
__version__ = "0.1.0"
