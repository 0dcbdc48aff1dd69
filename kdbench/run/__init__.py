"""``kdbench run``: its configuration and grid, the run context that builds and caches teacher, baseline and students,
cells that never raise for their own failures, the runner, and executors (in-process or Ray)."""
