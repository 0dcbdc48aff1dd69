"""Model + samples → what attacks read: per-token statistics in one cached batched pass, and the scoring context that
computes every other need (text variants, reference and shadow models, gradients, perturbations) once."""
