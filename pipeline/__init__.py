"""Pipeline definition and its runners (local Beam, Kubeflow)."""
