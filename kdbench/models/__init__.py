"""Base models and tokenizers: built-in tiny presets, Hugging Face loading, model families, LoRA, weight perturbation,
and the persistence of defended models (so a cached defended student loads back defended)."""
