"""Training of the demo model: a small Janus on synthetic shapes (`python -m training`)."""
