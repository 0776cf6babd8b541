"""Benchmarks that print figures (no timed assertions anywhere): `animerec bench serve`
(serve.py), `bench train` (train.py) and `bench pipeline` (pipeline.py)."""
