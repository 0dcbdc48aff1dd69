"""Looking deeper at finished models: ``kdbench audit`` of any model and texts, and per-block risk analysis."""
