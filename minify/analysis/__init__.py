"""Analyse: the target root's programs, their closures as the loader builds them, hints, verification."""
