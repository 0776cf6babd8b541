"""Kubeflow Pipelines compilation and the pipeline image."""
