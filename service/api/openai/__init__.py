"""The OpenAI-compatible routes under /v1: request models that tolerate unknown fields, OpenAI's error body, and
converters from OpenAI requests to the same engine parameters the native routes build."""
