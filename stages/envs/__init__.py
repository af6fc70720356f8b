"""Environments shared by several methods (HyperGrid; the fragment-molecule MDP will sit beside it)."""
