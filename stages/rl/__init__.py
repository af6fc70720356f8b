"""Soft-Q and GFlowNet machinery shared by max-ent GFlowNets and decoupled regularization."""
