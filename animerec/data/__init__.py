"""Reading, validating, converting and generating MyAnimeList data."""
