"""One router per resource: inference (understand, generate), health, metrics, model info."""
