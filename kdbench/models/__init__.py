"""Base models and tokenizers: built-in tiny presets and the default's shipped pre-trained bases (and the script that
builds them), Hugging Face loading, model families, LoRA, weight perturbation, and the persistence of defended models
(so a cached defended student loads back defended)."""
