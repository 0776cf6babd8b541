"""Towers, the TFRS model, the retrieval index and the serving signatures."""
