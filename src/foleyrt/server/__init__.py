"""The HTTP service: a FastAPI app with the web UI at `/` and the JSON API under `/v1`, one
GPU worker behind a bounded, durable job queue. Needs the `serve` extra."""
