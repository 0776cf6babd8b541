"""Custom TFX components."""
