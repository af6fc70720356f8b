"""Scaling trends in LLM robustness (Howe, McKenzie et al., FAR AI, 2024/2025): a family of GPT-NeoX
classifiers of growing size on PasswordMatch / WordLength, attacked with GCG and RandomToken, then
adversarially trained in rounds; ASR against parameters, attack compute and defence compute.
Method note: shared/methods/robustness_scaling.md; results: stages/robustness/README.md."""
