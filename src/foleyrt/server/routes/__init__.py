"""One router per resource: jobs, and the service itself (health, models)."""
