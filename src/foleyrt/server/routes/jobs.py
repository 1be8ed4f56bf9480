"""`/v1/jobs`: submit, list, follow, cancel, download."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Header, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from foleyrt.errors import InputError
from foleyrt.server.deps import ServiceDep, require_token
from foleyrt.server.schemas import (
    API_PREFIX,
    IDEMPOTENCY_KEY_CHARS,
    MAX_CURSOR,
    MAX_PAGE,
    ErrorOut,
    JobList,
    JobOut,
    JobRequest,
    OutputFormat,
)
from foleyrt.server.store import JobState

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_token)],
                   responses={401: {"model": ErrorOut, "description": "token missing or wrong"},
                              403: {"model": ErrorOut, "description": "another web site's "
                                    "request, or an unknown Host (servers without a token)"},
                              422: {"model": ErrorOut, "description": "bad parameters"}})

_MEDIA_TYPES: dict[str, str] = {"wav": "audio/wav", "mp4": "video/mp4", "png": "image/png"}


class Download(FileResponse):
    """A file whose Range refusals are the API's: a Range it cannot read (another unit,
    `bytes=abc`, an end before its start) is ignored and the whole file sent, as RFC 9110
    section 14.2 allows (Starlette answers a plain-text 400); one that starts past the end is
    416 with a one-line detail (raised before the answer starts, so the refusal handlers
    write it)."""

    # Starlette's own parsing step (no public hook; Starlette is pinned in constraints.txt)
    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader:
            return []  # Starlette's own "send it all"
        except RangeNotSatisfiable:
            raise HTTPException(
                416, f"the range starts past the end of the file ({file_size} bytes)",
                headers={"Content-Range": f"bytes */{file_size}"}) from None


def _errors(*codes: int) -> dict[int | str, dict[str, object]]:
    return {code: {"model": ErrorOut} for code in codes}


async def single_fields(request: Request) -> None:
    """Refuse a form naming a field twice (two `video` parts): which one counts would be a
    guess. The form is the one FastAPI has already parsed (Starlette caches it)."""
    form = await request.form()
    for name in set(form.keys()):
        if len(form.getlist(name)) > 1:
            shown = name if len(name) <= 40 and name.isprintable() else "(a long name)"
            raise InputError(f"field {shown!r} was sent {len(form.getlist(name))} times; "
                             "send each field once")


IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=IDEMPOTENCY_KEY_CHARS,
    pattern=r"^[\x21-\x7e]+$",
    description="retry-safe submission: the same key with the same request gives the same job; "
                "with another request, 409 (1-255 visible ASCII characters)")]


@router.post(
    "", status_code=202,
    responses=_errors(400, 408, 409, 413, 415, 429, 503, 507),
    summary="Submit a job (multipart: a video and parameters, or parameters alone)",
    dependencies=[Depends(single_fields)],
)
def create_job(
    request: Annotated[JobRequest, Form(media_type="multipart/form-data")],
    service: ServiceDep,
    response: Response,
    key: IdempotencyKey = None,
) -> JobOut:
    """Queued at once and answered 202 with the job's id; follow it with GET. 400: the body
    is not a multipart form; 408: the upload
    stalled; 409: the Idempotency-Key came with another request; 413: the upload is over the
    size limit; 415: it is not a video, or one over the decoding limits; 422: a video the model
    cannot use (too short, too long) or bad parameters; 429: the queue is full (see
    Retry-After); 503: shutting down; 507: the server's disk is full."""
    job = service.submit(request, key)
    response.headers["Location"] = f"{API_PREFIX}/jobs/{job.id}"
    return JobOut.from_record(job, service.settings.result_ttl_s)


@router.get("", summary="Jobs, newest first, a page at a time")
def list_jobs(
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="jobs per page")] = 20,
    cursor: Annotated[int | None, Query(ge=1, le=MAX_CURSOR,
                                        description="`next_cursor` of the previous page")] = None,
) -> JobList:
    jobs, next_cursor = service.page(limit, cursor)
    ttl = service.settings.result_ttl_s
    return JobList(jobs=[JobOut.from_record(j, ttl) for j in jobs], next_cursor=next_cursor)


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
    response_class=Download,
    responses={200: {"content": {t: {} for t in _MEDIA_TYPES.values()}},
               **_errors(404, 409, 410, 416)},
    summary="Download sample `index` (from 0) as WAV, MP4 (video jobs) or spectrogram PNG",
)
def get_output(job_id: str, index: int, fmt: OutputFormat, service: ServiceDep) -> Download:
    """410: the results expired, or their files are gone from the server. Ranges are
    served (206); 416: the range starts past the end."""
    path = service.output_path(job_id, index, fmt)
    return Download(path, media_type=_MEDIA_TYPES[fmt],
                    filename=f"foley-{job_id[:8]}-{index}.{fmt}")
