"""Scores → numbers: membership metrics (AUC with bootstrap CIs, TPR at low FPR), running a target's attacks, and
verbatim memorization."""
