"""`/v1/jobs`: submit, follow, cancel, download."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Response
from fastapi.responses import FileResponse

from foleyrt.server.deps import ServiceDep, require_token
from foleyrt.server.schemas import API_PREFIX, ErrorOut, JobOut, JobRequest, OutputFormat
from foleyrt.server.store import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_token)],
                   responses={401: {"model": ErrorOut, "description": "token missing or wrong"}})

_MEDIA_TYPES: dict[str, str] = {"wav": "audio/wav", "mp4": "video/mp4", "png": "image/png"}


def _errors(*codes: int) -> dict[int | str, dict[str, object]]:
    return {code: {"model": ErrorOut} for code in codes}


@router.post(
    "", status_code=202,
    responses=_errors(413, 415, 422, 429),
    summary="Submit a job (multipart: a video and parameters, or parameters alone)",
)
def create_job(
    request: Annotated[JobRequest, Form(media_type="multipart/form-data")],
    service: ServiceDep,
    response: Response,
) -> JobOut:
    """Queued at once and answered 202 with the job's id; follow it with GET. 413: the
    upload is over the size limit; 415: it is not a video; 422: a video the model cannot use
    (too short, too long) or bad parameters; 429: the queue is full (see Retry-After)."""
    job = service.submit(request)
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    return JobOut.from_record(job, service.settings.result_ttl_s)


@router.get("/{job_id}", responses=_errors(404), summary="State, progress and outputs of a job")
def get_job(job_id: str, service: ServiceDep) -> JobOut:
    return JobOut.from_record(service.get(job_id), service.settings.result_ttl_s)


@router.delete(
    "/{job_id}",
    responses={202: {"model": JobOut, "description": "running: it stops at its next step"},
               **_errors(404, 409)},
    summary="Cancel a queued or running job",
)
def cancel_job(job_id: str, service: ServiceDep, response: Response) -> JobOut:
    """200 with the cancelled job if it was queued; 202 if it is running (it stops at its
    next step: poll GET); 409 if it has already ended."""
    job = service.cancel(job_id)
    if job.state is JobState.RUNNING:
        response.status_code = 202
    return JobOut.from_record(job, service.settings.result_ttl_s)


@router.get(
    "/{job_id}/outputs/{index}.{fmt}",
    response_class=FileResponse,
    responses={200: {"content": {t: {} for t in _MEDIA_TYPES.values()}}, **_errors(404, 409, 410)},
    summary="Download sample `index` (from 0) as WAV, MP4 (video jobs) or spectrogram PNG",
)
def get_output(job_id: str, index: int, fmt: OutputFormat, service: ServiceDep) -> FileResponse:
    path = service.output_path(job_id, index, fmt)
    return FileResponse(path, media_type=_MEDIA_TYPES[fmt],
                        filename=f"foley-{job_id[:8]}-{index}.{fmt}")
