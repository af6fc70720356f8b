"""Environments shared by several methods (HyperGrid; the fragment-molecule MDP in `fragments`)."""
