"""Numbers → records: the result-record schema and its validation, the per-sample files beside it, and utility/risk
deltas of defended against undefended students."""
