"""The Bottle adapter: routes, request validation, the OpenAPI document."""
