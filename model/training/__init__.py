"""Training: Hungarian matching, the set-prediction losses, the training loop for step 0 and step t
(with the frozen-feature cache) and the whole-network baselines."""
