"""The API docs page in a real headless Chromium with every request off this server blocked
(issue 19, item 9): Swagger UI renders the schema from the server's own files, and the content
security policy blocks nothing it needs."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from foleyrt.pipeline.pipeline import FoleyPipeline
from tests.server.conftest import MakeSettings
from tests.server.support import live_server
from tests.server.test_browser import CHROMIUM, CHROMIUM_ARGS, sync_api

pytestmark = pytest.mark.browser


def test_docs_render_offline_under_the_csp(make_settings: MakeSettings,
                                           tiny_pipeline: FoleyPipeline) -> None:
    with live_server(make_settings(), tiny_pipeline) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        outside: list[str] = []
        problems: list[str] = []

        def only_this_server(route: sync_api.Route) -> None:
            if urlsplit(route.request.url).netloc == urlsplit(url).netloc:
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        page.route("**/*", only_this_server)
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.goto(f"{url}/docs")
        sync_api.expect(page.locator(".swagger-ui .info .title")).to_contain_text("foleyrt")
        sync_api.expect(page.locator(".opblock-summary-path").first).to_be_visible()
        browser.close()
    assert outside == [] and problems == []
