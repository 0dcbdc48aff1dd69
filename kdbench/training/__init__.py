"""How any model is trained: the loop (micro-batches with token-weighted accumulation, halved on out-of-memory) and the
distillation objectives (forward/reverse KL, JSD, skew KL, TV)."""
