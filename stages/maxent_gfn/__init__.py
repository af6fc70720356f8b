"""Maximum-entropy GFlowNets with soft Q-learning (Mohammadpour et al., AISTATS 2024)."""
