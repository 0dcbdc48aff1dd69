"""How any model is trained: the loop (micro-batches with token-weighted accumulation, halved on out-of-memory) and the
distillation objectives (forward/reverse KL, JSD, skew KL, TV)."""

from kdbench.core.deprecation import moved_to_api

# kdbench 0.1's plugin imports from this path keep working, with a warning (see kdbench.core.deprecation).
__getattr__ = moved_to_api(
    __name__,
    [
    "shifted",
    "sft_loss",
    "chain",
    "collate",
    "to_device",
    "train_loop",
    "LossFn",
    "Encoded",
    "TrainConfig",
    ],
)
