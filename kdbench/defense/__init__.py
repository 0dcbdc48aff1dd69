"""The defense interface (five stages and a lifecycle) and the stack that composes defenses; defended-model persistence
lives in :mod:`kdbench.models.defended`."""
