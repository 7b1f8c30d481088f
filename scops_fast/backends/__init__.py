"""One module per backend; see `scops_fast._dispatch` for the protocol they follow."""
