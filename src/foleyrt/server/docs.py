"""The API docs page (`/docs`), whole from this server: Swagger UI's files come from the
`swagger-ui-bundle-v2` package, not a CDN, so the page works offline and under the strict
content security policy (its start-up script is a file too, nothing inline)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
ASSETS_PATH = "/docs/assets"

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>foleyrt API</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="{ASSETS_PATH}/swagger-ui.css">
  <script src="{ASSETS_PATH}/swagger-ui-bundle.js" defer></script>
  <script src="/docs.js" defer></script>
</head>
<body><div id="swagger-ui"></div></body>
</html>
"""


def add_docs(app: FastAPI) -> None:
    """Serve the page and its assets (the app is built with `docs_url=None`)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(_PAGE)
