"""`foleyrt batch`: a library of clips in, one sound track per clip out, the models loaded once.

`plan` reads the inputs, names the outputs and keeps the report (no model needed); `stages`
is what happens to an item or a group of items; `decoders` the processes that decode clips
apart from the GPU's threads; `local` runs the stages overlapped on one machine, `ray` on a
Ray cluster.
"""

from foleyrt.batch.decoders import DecodePool
from foleyrt.batch.local import (
    DEFAULT_DECODE_WORKERS,
    DecodeIn,
    Encoders,
    LocalOptions,
    RunStats,
    run_local,
)
from foleyrt.batch.plan import (
    FORMATS,
    VIDEO_SUFFIXES,
    BatchItem,
    BatchReport,
    BatchSettings,
    ItemResult,
    Job,
    Status,
    check_name,
    check_report_path,
    item_seed,
    plan_batch,
    prepare_outdir,
    read_csv,
    read_inputs,
    safe_name,
    scan_folder,
)

__all__ = [
    "DEFAULT_DECODE_WORKERS", "FORMATS", "VIDEO_SUFFIXES", "BatchItem", "BatchReport",
    "BatchSettings", "DecodeIn", "DecodePool", "Encoders", "ItemResult", "Job", "LocalOptions",
    "RunStats", "Status", "check_name", "check_report_path", "item_seed", "plan_batch",
    "prepare_outdir", "read_csv", "read_inputs", "run_local", "safe_name", "scan_folder",
]
