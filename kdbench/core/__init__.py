"""The shared ground every stage stands on: errors, the artifact cache, the plugin registry, parameter parsing,
progress reporting, provenance, and the types the stages pass along (:class:`~kdbench.core.data.Example`,
:class:`~kdbench.core.types.Encoded`, :class:`~kdbench.core.types.TrainedModel`). Imports nothing else of kdbench."""
