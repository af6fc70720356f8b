"""Actions World Models (Ma, Ni, Gehring, D'Oro, Bacon, ICML 2024): policy gradients through transformer world
models that see only the initial state and the actions, against Markovian and history models and the true
differentiable simulator (method note: shared/methods/awm.md; results: stages/awm/README.md)."""
