"""Faults as start/stop ops over nodes (faults), partition shapes as graphs (shapes), schedules (schedule)."""
