"""A batch's inputs, its plan and its report: everything but the generation itself, so it is
tested without a model.

1. `read_inputs`: INPUT (a CSV, a folder, or video files) -> `BatchItem`s. All the cheap
   checks happen here and in 2, before any model loads: the CSV parses, its columns are
   known, seeds are integers, output names are plain file names.
2. `plan_batch` + `BatchReport.start`: every item gets its output files in OUTDIR (unique,
   predictable names) and its seed; items whose outputs all exist are marked skipped.

Decisions, and why:

- Videos are validated when their item starts (`FoleyPipeline.encode` probes the clip with
  `probe_video` before decoding), not upfront: probing thousands of files on a network share
  would delay the first result by minutes, and a clip that is bad upfront is equally
  reported and skipped when its turn comes. Paths named on the command line must exist
  (a typo should not cost a model load); paths inside a CSV are checked per item, so one
  stale row does not stop a spreadsheet of thousands.
- A folder contributes its files with a video extension (`VIDEO_SUFFIXES`), not hidden
  ones, not recursively. Picking by name keeps the start instant; a broken `.mp4` still
  fails loudly as an item, while `notes.txt` or macOS `._clip.mp4` files are not
  "failures". Sub-folders are left alone so OUTDIR may live inside the input folder.
- Output names are `<stem>.<ext>`, sanitised for file servers (no `<>:"/\\|?*`, control
  characters, leading dots or trailing dots/spaces) and de-duplicated case-insensitively
  in input order (`clip`, `clip-2`, ...), after the names a CSV gives explicitly. Names
  are a function of the input list alone, so a rerun with the same INPUT finds the same
  files. CSV names are validated, not rewritten: a name the user chose is used verbatim
  or refused.
- Resume: an item is done when all its outputs exist. Writers are atomic (temporary file +
  rename), so an existing output is always a complete one. An item with only some outputs
  (interrupted between samples or formats) is redone whole, replacing its own partial
  files, so all its outputs come from one seed.
"""
from __future__ import annotations

import _csv
import csv
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path

from foleyrt.atomic import check_parent, write_atomic
from foleyrt.errors import InputError, OutputError, UsageError
from foleyrt.media.audio import OUTPUT_SUFFIXES, numbered_paths
from foleyrt.request import MAX_SEED, GenerationRequest, check_prompt
from foleyrt.version import __version__

log = logging.getLogger(__name__)

# Containers FFmpeg reads that people keep clips in (animated GIFs too: game and web
# studios' loops); other files in a folder are skipped, and counted in the log.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                            ".ts", ".mts", ".m2ts", ".mxf", ".wmv", ".flv", ".3gp", ".ogv",
                            ".gif"})
# `index`: the release's CSVs number their rows with it; the release names its outputs by
# row position (pandas' own index) whatever the column says, so it is accepted and unused.
CSV_COLUMNS = ("video", "prompt", "negative_prompt", "seed", "output", "index")
# The release's help text calls the description column `text`.
CSV_SYNONYMS = {"text": "prompt"}
# `--release-names`: the release's output names, the row position from 0 on four digits.
RELEASE_NAME = "{:04d}"
FORMATS = {"mp4": (".mp4",), "wav": (".wav",), "both": (".mp4", ".wav")}

# Characters Windows/SMB shares refuse in a file name, plus control characters.
_UNSAFE_CHARS = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_FALLBACK_NAME = "clip"
# A seed cell: ASCII digits (Python's int() also takes "1_000", "+12" and other scripts' digits).
_SEED = re.compile(r"-?[0-9]+")


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchItem:
    """One clip to score, as the input described it."""

    video: Path
    prompt: str = ""
    negative_prompt: str | None = None  # None: the pipeline's default
    seed: int | None = None  # from a CSV `seed` cell
    output: str | None = None  # from a CSV `output` cell: the output file name
    source: str | None = None  # "shots.csv:7" for CSV rows: where to fix a bad item

    def request(self, base: GenerationRequest) -> GenerationRequest:
        """`base` (the batch's settings) with this item's text and seed."""
        negative = base.negative_prompt if self.negative_prompt is None else self.negative_prompt
        seed = base.seed if self.seed is None else self.seed
        return replace(base, prompt=self.prompt, negative_prompt=negative, seed=seed)


def read_inputs(
    inputs: Sequence[Path], *, prompt: str = "", negative_prompt: str | None = None,
    release_names: bool = False,
) -> list[BatchItem]:
    """INPUT as given on the command line: one CSV, one folder, or video files. `prompt`
    and `negative_prompt` fill in for items (and empty CSV cells) that have none;
    `release_names` names a CSV's outputs as the release does (see `read_csv`)."""
    missing = [str(p) for p in inputs if not p.exists()]
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    is_csv = len(inputs) == 1 and inputs[0].is_file() and inputs[0].suffix.lower() == ".csv"
    if release_names and not is_csv:
        raise UsageError("--release-names numbers the rows of a CSV; give one CSV")
    if is_csv:
        items = read_csv(inputs[0], prompt=prompt, negative_prompt=negative_prompt,
                         release_names=release_names)
    elif len(inputs) == 1 and inputs[0].is_dir():
        items = [BatchItem(video, prompt, negative_prompt) for video in scan_folder(inputs[0])]
        if not items:
            raise InputError(f"{inputs[0]}: no videos in this folder (looked for "
                             f"{', '.join(sorted(VIDEO_SUFFIXES))})")
    elif any(p.is_dir() or p.suffix.lower() == ".csv" for p in inputs):
        raise UsageError("give one CSV, one folder, or one or more video files")
    else:
        items = [BatchItem(video, prompt, negative_prompt) for video in inputs]
    return items


def scan_folder(folder: Path) -> list[Path]:
    """The folder's videos by extension, sorted by name; hidden entries and sub-folders are
    left out, and what else is skipped (other files, sub-folders, links to nothing) is
    named in the log: a clip should not vanish silently."""
    entries = sorted((p for p in folder.iterdir() if not p.name.startswith(".")),
                     key=lambda p: p.name)
    videos: list[Path] = []
    others: list[str] = []
    folders: list[str] = []
    dangling: list[str] = []
    for p in entries:  # one pass: a folder may hold 10,000 clips
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES:
            videos.append(p)
        elif p.is_file():
            others.append(p.name)
        elif p.is_dir():
            folders.append(p.name)
        elif not p.exists():
            dangling.append(p.name)
    for kind, names in (("file(s) without a video extension", others),
                        ("sub-folder(s), not searched", folders),
                        ("link(s) to no file", dangling)):
        if names:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            log.info("%s: skipped %d %s (%s)", folder, len(names), kind, shown)
    return videos


def read_csv(
    path: Path, *, prompt: str = "", negative_prompt: str | None = None,
    release_names: bool = False,
) -> list[BatchItem]:
    """A batch CSV with a header row: `video` (required), `prompt` (or `text`),
    `negative_prompt`, `seed`, `output`, and the release's `index` (accepted, unused).
    Column names are case-insensitive; blank rows are skipped; an empty cell means "the
    default". A relative video path is looked for in the CSV's folder, then in the working
    directory (where the release looks): the first that exists is used. `release_names`
    names each row's outputs as the release does, `0000`, `0001`, ... by position among
    the rows (a row's own `output` cell still wins)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: the CSV is empty; it needs a header row "
                                 f"such as 'video,prompt'")
            columns = _csv_columns(path, header)
            rows = [(line, row) for line, row in _numbered(reader)
                    if any(c.strip() for c in row)]
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; save the spreadsheet as 'CSV UTF-8'") from None
    except csv.Error as exc:
        raise InputError(f"{path}: not a valid CSV ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    if not rows:
        raise InputError(f"{path}: the CSV has a header but no rows")
    return [
        _csv_item(path, line, columns, row, prompt, negative_prompt,
                  RELEASE_NAME.format(position) if release_names else None)
        for position, (line, row) in enumerate(rows)
    ]


def _numbered(reader: _csv.Reader) -> Iterator[tuple[int, list[str]]]:
    """Each row with the line it starts on (`line_num` is the line it ends on: a quoted cell
    may hold line breaks)."""
    start = reader.line_num + 1
    for row in reader:
        yield start, row
        start = reader.line_num + 1


def _csv_columns(path: Path, header: list[str]) -> list[str]:
    """Header cells -> canonical column names, refusing unknown, duplicate or missing ones
    (a misspelt `promt` column must not silently give every clip an empty prompt)."""
    columns = [h.strip().lower() for h in header]
    columns = [CSV_SYNONYMS.get(c, c) for c in columns]
    unknown = [h.strip() for h, c in zip(header, columns, strict=True) if c not in CSV_COLUMNS]
    if unknown:
        raise InputError(
            f"{path}: unknown column(s) {', '.join(repr(u) for u in unknown)}; the known "
            f"columns are {', '.join(CSV_COLUMNS)} ('text' is accepted for 'prompt')"
        )
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise InputError(f"{path}: column(s) {', '.join(repeated)} appear more than once "
                         "('text' and 'prompt' are the same column)")
    if "video" not in columns:
        raise InputError(f"{path}: the CSV needs a 'video' column")
    return columns


def _csv_item(
    path: Path, line: int, columns: list[str], row: list[str], prompt: str,
    negative_prompt: str | None, default_output: str | None,
) -> BatchItem:
    where = f"{path.name}:{line}"
    if len(row) > len(columns):
        raise InputError(f"{where}: {len(row)} cells but {len(columns)} columns; quote cells "
                         "that contain commas")
    # A short row (trailing cells left out) reads as empty cells.
    cells = {c: v.strip() for c, v in zip(columns, row, strict=False)}
    video = cells.get("video", "")
    if not video:
        raise InputError(f"{where}: the video cell is empty")
    seed_text = cells.get("seed", "")
    if seed_text and not _SEED.fullmatch(seed_text):
        raise InputError(f"{where}: seed {seed_text!r} is not a whole number")
    seed = int(seed_text) if seed_text else None
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InputError(f"{where}: seed {seed} is not between 0 and {MAX_SEED}")
    for name in ("prompt", "negative_prompt"):
        try:
            check_prompt(name, cells.get(name, ""))
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    output = cells.get("output") or default_output
    if output is not None:
        check_name(output, where)
    return BatchItem(
        video=_csv_video_path(path, video),
        prompt=cells.get("prompt") or prompt,
        negative_prompt=cells.get("negative_prompt") or negative_prompt,
        seed=seed,
        output=output,
        source=where,
    )


def _csv_video_path(csv_path: Path, cell: str) -> Path:
    """A CSV's video cell as a path: absolute as it is; relative, the first of the CSV's
    folder and the working directory that has it (a CSV beside its clips, or the release's
    layout, where paths start from the folder the command runs in), else the CSV's folder
    (where the item then fails, naming that path)."""
    video = Path(cell).expanduser()
    beside = csv_path.parent / video
    if video.is_absolute() or beside.exists() or not video.exists():
        return beside
    return video


# --------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    """What every item is generated with: `request`'s steps, guidance and samples (per-item
    text and seeds come from `BatchItem`; item i without one uses `request.seed + i`)."""

    formats: tuple[str, ...] = (".mp4",)  # output suffixes, see FORMATS
    request: GenerationRequest = field(default_factory=GenerationRequest)
    overwrite: bool = False
    fail_fast: bool = False

    def __post_init__(self) -> None:
        if not self.formats or any(f not in OUTPUT_SUFFIXES for f in self.formats):
            raise UsageError(f"output formats must be among {OUTPUT_SUFFIXES}, got {self.formats}")
        self.request.check_source(has_video=True)


@dataclass(frozen=True)
class Job:
    """An item with its place in the batch, its output files and its seed."""

    index: int
    item: BatchItem
    name: str  # output base name, unique in OUTDIR (case-insensitively)
    bases: tuple[Path, ...]  # one per format: what `FoleyResult.save` is given
    outputs: tuple[Path, ...]  # every file the item writes (samples numbered)
    seed: int | None  # None: drawn at random when the item runs

    @property
    def where(self) -> str:
        return _where(self.item, self.index)

    def existing_outputs(self) -> list[Path]:
        return [p for p in self.outputs if p.is_file()]


def safe_name(text: str) -> str:
    """`text` as a file name any file server accepts: unsafe characters become `_`,
    leading dots (hidden files) and trailing dots or spaces are dropped."""
    return _UNSAFE_CHARS.sub("_", text).lstrip(" .").rstrip(" .")


def check_name(name: str, where: str) -> str:
    """An output name from the user: used verbatim, so it must already be safe."""
    if not name or safe_name(name) != name:
        raise InputError(
            f"{where}: output {name!r} is not a plain file name (no folders or '..', no "
            "leading dot, none of <>:\"/\\|?* or control characters)"
        )
    return name


def plan_batch(items: Sequence[BatchItem], outdir: Path, settings: BatchSettings) -> list[Job]:
    """Give each item its output files and seed. Explicit (CSV) names are reserved first;
    video stems then take the first free name among `stem`, `stem-2`, `stem-3`, ..."""
    if not items:
        raise InputError("nothing to do: no items")
    taken: dict[str, str] = {}  # casefolded name -> the item that has it
    names: list[str | None] = []
    for index, item in enumerate(items):
        name = None
        if item.output is not None:
            where = _where(item, index)
            name = _explicit_name(item.output, settings.formats, where)
            other = taken.setdefault(name.casefold(), where)
            if other != where:
                raise InputError(f"{where}: output {name!r} is also used at {other}")
        names.append(name)
    jobs = []
    tried: dict[str, int] = {}  # casefolded stem -> the last number given it
    for index, (item, name) in enumerate(zip(items, names, strict=True)):
        if name is None:
            name = _free_name(safe_name(item.video.stem) or _FALLBACK_NAME, taken, tried)
            taken[name.casefold()] = _where(item, index)
        bases = tuple(outdir / f"{name}{suffix}" for suffix in settings.formats)
        outputs = tuple(p for base in bases
                        for p in numbered_paths(base, settings.request.samples))
        jobs.append(Job(index, item, name, bases, outputs,
                        item_seed(item, index, settings.request.seed)))
    _refuse_inputs_as_outputs(jobs)
    return jobs


def _where(item: BatchItem, index: int) -> str:
    return item.source or f"item {index + 1}"


def _explicit_name(output: str, formats: tuple[str, ...], where: str) -> str:
    """A CSV output name: with or without a `.mp4`/`.wav` ending, as long as the ending is a
    format being written (a `.wav` name under `--format mp4` is a mistake, not a wish)."""
    suffix = Path(output).suffix.lower()
    if suffix in OUTPUT_SUFFIXES:
        if suffix not in formats:
            raise InputError(f"{where}: output {output!r} ends in {suffix} but the batch "
                             f"writes {', '.join(formats)}")
        return output[: -len(suffix)]
    return output


def _free_name(stem: str, taken: dict[str, str], tried: dict[str, int]) -> str:
    """The first free name among `stem`, `stem-2`, ..., searched on from the number the
    stem got last (`tried`): a CSV of 10,000 rows of one clip plans in linear time."""
    n = tried.get(stem.casefold(), 1)
    name = stem if n == 1 else f"{stem}-{n}"
    while name.casefold() in taken:
        n += 1
        name = f"{stem}-{n}"
    tried[stem.casefold()] = n
    return name


def item_seed(item: BatchItem, index: int, base: int | None) -> int | None:
    """Item `index`'s noise seed: its own, else `base + index` (wrapping past the largest
    seed), else None (drawn when it starts)."""
    if item.seed is not None:
        return item.seed
    return None if base is None else (base + index) % (MAX_SEED + 1)


def _file_key(path: Path) -> str:
    """One spelling per file for comparisons (links followed; a link loop stays itself,
    where `Path.resolve` raises)."""
    return os.path.normcase(os.path.realpath(path))


def _refuse_inputs_as_outputs(jobs: Sequence[Job]) -> None:
    inputs = {_file_key(j.item.video): j for j in jobs}
    for job in jobs:
        for path in job.outputs:
            clash = inputs.get(_file_key(path))
            if clash is not None:
                raise UsageError(f"output {path} would replace the input of {clash.where}; "
                                 "choose another output folder")


def prepare_outdir(outdir: Path, inputs: Iterable[Path]) -> Path:
    """OUTDIR, created if its parent exists (a typo in a deeper path is an error, not a new
    tree). It may not be an input folder: the results would be read as inputs next run."""
    if any(p.is_dir() and _file_key(p) == _file_key(outdir) for p in inputs):
        raise UsageError(f"{outdir}: is the input folder; write the results to another folder")
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: exists and is not a folder")
    if not outdir.exists():
        check_parent(outdir, "parent folder")
        try:
            outdir.mkdir()
        except OSError as exc:
            raise OutputError(f"{outdir}: cannot be created ({exc.strerror})") from None
        log.info("created %s", outdir)
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise OutputError(f"{outdir}: is not writable")
    return outdir


def check_report_path(path: Path, inputs: Iterable[Path], jobs: Sequence[Job]) -> Path:
    """Refuse a report path that cannot be written, before hours of work end in it, or that
    names a file of the run: one of `inputs` (the CSV, a clip), an item's clip or output."""
    taken = {_file_key(p) for p in inputs}
    taken.update(_file_key(p) for job in jobs for p in (job.item.video, *job.outputs))
    if _file_key(path) in taken:
        raise UsageError(f"{path}: is an input or an output of this batch; choose another "
                         "report name")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name for the report")
    check_parent(path, "folder")
    return path


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


class Status(str, Enum):
    DONE = "done"
    SKIPPED = "skipped"  # all outputs existed
    FAILED = "failed"
    NOT_RUN = "not run"  # pending, or left over after --fail-fast or an interruption


@dataclass
class ItemResult:
    job: Job
    status: Status
    error: str | None = None
    seconds: float | None = None
    seed: int | None = None

    def line(self) -> str:
        """The one line a failed item prints: where it came from and what went wrong."""
        return f"{self.job.where} {self.status.value}: {self.error}"

    def to_dict(self) -> dict[str, object]:
        item = self.job.item
        return {"input": str(item.video), "source": item.source, "prompt": item.prompt,
                "outputs": [str(p) for p in self.job.outputs], "status": self.status.value,
                "error": self.error, "seconds": self.seconds, "seed": self.seed}


@dataclass
class BatchReport:
    """Per-item outcomes, in input order; filled in as the batch runs."""

    items: list[ItemResult]
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def start(cls, jobs: Sequence[Job], *, overwrite: bool) -> BatchReport:
        """Skip the items whose outputs all exist, unless `overwrite`."""
        def initial(job: Job) -> Status:
            done = not overwrite and len(job.existing_outputs()) == len(job.outputs)
            return Status.SKIPPED if done else Status.NOT_RUN

        return cls([ItemResult(job, initial(job)) for job in jobs])

    @property
    def pending(self) -> list[ItemResult]:
        return [r for r in self.items if r.status is Status.NOT_RUN]

    def count(self, status: Status) -> int:
        return sum(r.status is status for r in self.items)

    @property
    def ok(self) -> bool:
        return self.count(Status.FAILED) == 0

    def summary(self) -> str:
        text = (f"{self.count(Status.DONE)} done, {self.count(Status.SKIPPED)} skipped "
                f"(existing), {self.count(Status.FAILED)} failed")
        not_run = self.count(Status.NOT_RUN)
        return f"{text}, {not_run} not run" if not_run else text

    def to_dict(self, settings: BatchSettings, **context: object) -> dict[str, object]:
        return {
            "foleyrt": __version__, **context, "settings": asdict(settings),
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round((datetime.now(UTC) - self.started).total_seconds(), 3),
            "summary": {s.value: self.count(s) for s in Status},
            "items": [r.to_dict() for r in self.items],
        }

    def write(self, path: Path, settings: BatchSettings, **context: object) -> None:
        """Write the JSON report atomically: a reader never sees half of it."""
        text = json.dumps(self.to_dict(settings, **context), indent=2, ensure_ascii=False)
        write_atomic(path, text + "\n")
