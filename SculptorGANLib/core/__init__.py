"""Core types: volumes with geometry, structures and their label encoding, options, errors, device choice."""
