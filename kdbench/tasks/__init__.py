"""Task → examples → splits: task manifests (one YAML per task), their data sources (files, the hub, the embedded
synthetic generator) and the split roles private/public/holdout/eval, frozen by split manifests.

For other tools: :func:`dataset_dict` gives a task's roles as a ``datasets.DatasetDict``, :func:`export_task` writes
them to a directory (``kdbench tasks export``)."""

from kdbench.tasks.export import TaskData, dataset_dict, export_task, task_data

__all__ = ["TaskData", "dataset_dict", "export_task", "task_data"]
