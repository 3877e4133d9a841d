"""Inspection tools. Today: token-length analysis of a run's model inputs (lab.lengths, `tunelab data lengths`)."""
