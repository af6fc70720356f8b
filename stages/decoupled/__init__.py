"""Decoupling regularization from the action space (Mohammadpour et al., ICLR 2024)."""
