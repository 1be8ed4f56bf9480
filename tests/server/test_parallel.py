"""The server with `--parallel cfg` (two CPU processes here): the worker owns the parallel
pipeline, loaded at start-up, and its second process ends with the server."""

from __future__ import annotations

import torch.distributed as dist
from fastapi.testclient import TestClient

from foleyrt.accel.runtime import RuntimeConfig
from foleyrt.server.app import create_app
from tests.server.conftest import MakeSettings
from tests.server.support import submit_text, wait_for


def test_jobs_run_on_a_cfg_parallel_pipeline(make_settings: MakeSettings) -> None:
    app = create_app(make_settings(runtime=RuntimeConfig(parallel="cfg")))
    with TestClient(app) as client:
        job = wait_for(client, submit_text(client, samples=2).json()["id"])
        assert job["state"] == "succeeded", job["error"]
        assert len(job["outputs"]) == 2
        assert dist.is_initialized()
    assert not dist.is_initialized()
