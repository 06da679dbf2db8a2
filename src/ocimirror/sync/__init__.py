"""Scheduled sync: configuration, schedules, state and the planner."""
