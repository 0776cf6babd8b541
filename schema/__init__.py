"""The checked-in schema of the raw examples."""
