"""Inspection tools: token lengths, templates, model comparisons."""
