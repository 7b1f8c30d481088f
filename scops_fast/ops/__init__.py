"""Autograd wrappers and fake (meta) implementations of the compiled `scops_fast::`
custom ops, one file per op family; `compose.py` builds the losses from them.
Importing an op-family module requires the compiled library loaded."""
