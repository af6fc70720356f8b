"""DemP (Demon Pruning): structured pruning by letting neurons die (Dufort-Labbé et al., 2024).

data -> train (dense | demp_l<i> | magnitude_l<i>) -> prune -> evaluate -> aggregate; see rules.smk.
"""
