"""Self-predictive representations for RL (Ni, Eysenbach, SeyedSalehi, Ma, Gehring, Mahajan, Bacon, "Bridging
State and History Representations: Understanding Self-Predictive RL", ICLR 2024; reference code
twni2016/self-predictive-rl). Stages: linear (collapse study), mdp (TD3-style agent with ZP / OP / no aux loss
on a task with distractor dimensions), pomdp (recurrent Q-learning on a delayed-cue chain), aggregate.
Method note: shared/methods/self_predictive.md."""
