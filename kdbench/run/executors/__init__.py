"""Where a run's groups and cells execute: in this process (:mod:`.local`) or as Ray tasks (:mod:`.ray`)."""
