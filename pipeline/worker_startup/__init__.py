"""Start-up code for the Beam worker processes of a local run (see sitecustomize.py)."""
