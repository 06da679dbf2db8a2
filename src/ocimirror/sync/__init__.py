"""Scheduled sync: the planner, one pass over the mirrors, the daemon and their commands."""
