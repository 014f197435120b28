"""The HTTP API: FastAPI app factory, routes, protocol models, the error table."""
