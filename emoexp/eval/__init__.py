"""Evaluation: scoring responses and remembering the scores."""
