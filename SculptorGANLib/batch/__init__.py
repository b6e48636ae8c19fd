"""Cohort processing (a door, like the CLI): the pipeline over many cases, sharded by rank."""
