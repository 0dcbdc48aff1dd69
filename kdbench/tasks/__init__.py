"""Task → examples → splits: task manifests (one YAML per task), their data sources (files, the hub, the embedded
synthetic generator) and the split roles private/public/holdout/eval, frozen by split manifests."""
