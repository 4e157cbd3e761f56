"""Compiled kernels: the LSTM passes, packed recurrent products, BLAS wrappers, OpenMP shim."""
