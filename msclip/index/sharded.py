"""Sharded index builds under ``torchrun``: every process encodes its share, one process writes.

``torchrun --nproc_per_node N -m msclip.index build INDEX --images ... --scenes ...`` (and the
usual ``--nnodes``/``--rdzv-*`` flags across machines) starts N processes that join one
``torch.distributed`` group (gloo on CPUs, NCCL on GPUs, each process on its local GPU). Then:

1. Every process plans the same sources (:func:`msclip.index.build.plan_sources`, a fixed
   order); the processes compare their plans, reading settings and models first, and all
   refuse a group that differs (other inputs or working folders, another tiling, another
   precision chosen by ``auto`` on another kind of processor), before anything is written.
   Process 0 opens the index for writing (the store's lock makes it the only writer),
   reads which sources are already committed, and which finished encodings a killed run left in
   the spool (below), and broadcasts the sources still to encode.
2. The sources to encode are dealt to the processes in plan order, each to the process with the
   fewest items so far (longest-processing-time balancing of files and scene tiles).
3. Every process encodes its sources in plan order. Process 0 keeps its own in memory; the others
   write each finished source to the spool, ``INDEX/spool/source-<position>.npz`` (embeddings,
   metadata rows, failures and the model fingerprint, written atomically).
4. Process 0 adds the sources to the index strictly in plan order, taking each from its own
   encodings or from the spool as soon as it is there, and commits every ``commit_seconds``; the
   ids, metadata and embeddings are those of a one-process build (the embeddings to float
   rounding: a batch holds other images). The other processes leave as soon as their share is
   spooled; process 0 removes the spool after the last commit.

Processes that stop. Under torchrun a process that fails or is killed stops the others.
Started otherwise (a batch system's tasks, by hand) nothing would, and process 0 would wait for
the sources of a dead process for good: so every other process leaves its error in the spool
when it fails, and a sign of life while it has sources left to spool, and process 0 stops with a
:class:`~msclip.errors.ProcessGroupError` naming the process and the source it waits for when
the process failed or gave no sign of life for ``_SILENCE_SECONDS`` (5 minutes).

Resuming. A killed process (torchrun then stops the others) loses at most what was not yet
committed or spooled: rerunning the same command skips committed sources (the store's commit
protocol), takes spooled encodings of the same model as they are, and encodes the rest.

Across machines the index directory must be on storage every machine sees (NFS, a cluster file
system): the spool is how encodings travel to process 0. Every process checks, before encoding,
that it sees a file process 0 wrote there; one that does not stops them all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msclip.encode import Failure
from msclip.errors import BandCoverageError, InvalidArgumentError, ProcessGroupError
from msclip.index.build import (
    SPOOL_DIR,
    SPOOL_SIGNS,
    BuildReport,
    EncodedSource,
    Source,
    add_encoded,
    drop_spool,
    encode_sources,
    model_info,
    pending_work,
    plan_sources,
    retry_source,
)
from msclip.index.store import IndexStore, IndexWriter
from msclip.progress import progress_bar

__all__ = ["SPOOL_DIR", "assign_sources", "build_sharded", "distributed_world"]

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.05
#: How often a process with sources left to spool rewrites its sign of life, and how long
#: process 0, waiting for one of its sources, takes silence for its end. Under torchrun a process
#: that dies stops the others; started otherwise (a batch system's tasks, by hand) nothing
#: would, and process 0 would wait for the source for good.
_BEAT_SECONDS = 5.0
_SILENCE_SECONDS = 300.0
_SHARED_WAIT_SECONDS = 10.0


def distributed_world() -> tuple[int, int]:
    """``(rank, world size)`` of the ``torch.distributed`` group this process is in (``(0, 1)``
    outside one)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def assign_sources(sizes: Sequence[int], world: int) -> list[int]:
    """Process of each source: in order, to the process with the fewest items so far (ties to the
    lower rank), so files and large scenes spread evenly."""
    load = [0] * world
    out = []
    for n in sizes:
        r = min(range(world), key=lambda i: (load[i], i))
        out.append(r)
        load[r] += max(1, n)
    return out


def _spool_file(spool: Path, position: int) -> Path:
    return spool / f"source-{position:08d}.npz"


def _write_spool(spool: Path, done: EncodedSource, key: str, fingerprint: str) -> None:
    from msclip.io import atomic_write

    meta = {
        "key": key,
        "fingerprint": fingerprint,
        "position": done.position,
        "rows": done.rows,
        "failures": [[f.index, f.name, f.reason] for f in done.failures],
        "nodata": done.nodata,
        "unreadable": done.unreadable,
        "stamp": done.stamp,
        "failed_tiles": done.failed_tiles,
        "items": done.items,
    }
    text = json.dumps(meta, allow_nan=True)  # rows hold NaN bounds for files without a CRS

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, embeddings=done.embeddings, meta=np.array(text))

    atomic_write(_spool_file(spool, done.position), write, ".npz")


def _read_spool(path: Path, key: str, fingerprint: str, stamp: Any = False) -> EncodedSource | None:
    """A spooled source, or ``None`` when it is unreadable or from another source or model (or,
    when ``stamp`` is given, of another version of the file)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            emb = np.asarray(z["embeddings"], dtype=np.float32)
    except (OSError, ValueError, KeyError) as exc:
        logger.warning("ignoring unreadable spooled encoding %s (%s)", path, exc)
        return None
    if meta.get("key") != key or meta.get("fingerprint") != fingerprint:
        return None
    if stamp is not False and meta.get("stamp") != stamp:
        return None
    fails = [Failure(int(i), str(n), str(r)) for i, n, r in meta.get("failures", [])]
    return EncodedSource(int(meta["position"]), emb, list(meta["rows"]), fails,
                         int(meta.get("nodata", 0)), bool(meta.get("unreadable")),
                         meta.get("stamp"), list(meta.get("failed_tiles", [])),
                         int(meta.get("items", 1)))  # fmt: skip


def _process_zero_error(plan: dict[str, Any], path: Any) -> BaseException:
    """What process 0 met opening the index, raised on the other processes: the same msclip
    error (message and argument at fault), so that every process leaves as process 0 does (a
    usage error, not an internal one); another error as a RuntimeError naming it."""
    from msclip import errors

    kind = getattr(errors, str(plan.get("kind")), None)
    if isinstance(kind, type) and issubclass(kind, errors.MSCLIPError):
        with contextlib.suppress(Exception):  # a class that takes other arguments: the fallback
            return kind(plan.get("message", ""), param=plan.get("param"))
    return RuntimeError(f"process 0 could not open the index {path}: {plan['error']}")


def build_sharded(
    path: str | os.PathLike,
    model: Any,
    preprocess: Any,
    images: Sequence[str] = (),
    scenes: Sequence[str] = (),
    *,
    tile_size: int | None = None,
    stride: int | None = None,
    min_valid: float = 0.5,
    nodata: float | None = None,
    batch_size: int | None = None,
    workers: int = 0,
    progress: bool = False,
    commit_seconds: float = 60.0,
    must_exist: bool = False,
    on_source: Callable[[int], None] | None = None,
    abort_on: tuple[type[BaseException], ...] = (BandCoverageError,),
    rank: int = 0,
    world: int = 1,
) -> BuildReport:
    """:func:`msclip.index.build.build_index` for one process of a ``torch.distributed`` group
    (see the module docstring). Every process of the group calls it with the same arguments.

    Args:
        path, model, preprocess, images, scenes, tile_size, stride, min_valid, nodata,
            batch_size, workers, progress, commit_seconds, must_exist, on_source, abort_on: as
            for :func:`msclip.index.build.build_index` (a process that meets an item of
            ``abort_on`` raises it; ``torchrun`` then stops the others, and a rerun resumes).
        rank: this process's rank.
        world: the number of processes.

    Returns:
        On process 0 the build's report (``count``: embeddings in the index); on the others the
        report of their own share (``count`` is 0).
    """
    import torch.distributed as dist

    tile = tile_size or int(model.image_size)
    sources = plan_sources(images, scenes, tile, stride)
    fingerprint = _spool_key(model, preprocess, tile, stride, min_valid, nodata)
    # before anything is written: processes given other inputs, settings or another model
    # would spool encodings that process 0 takes for other sources, or cannot use
    settings = _read_settings(preprocess, tile, stride, min_valid, nodata)
    _check_same_plan(_plan_identity(sources, model, settings, fingerprint), world)
    spool = Path(path) / SPOOL_DIR
    writer: IndexWriter | None = None
    payload: list[Any] = [None]
    report = BuildReport(sources=len(sources))
    try:
        if rank == 0:
            if must_exist:
                IndexStore.open(path)
            writer = IndexWriter.open_or_create(path, int(model.embed_dim), model_info(model))
            work = pending_work(writer, sources, report)
            spool.mkdir(exist_ok=True)
            _clear_signs(spool)  # of an earlier run's processes
            spooled = _usable_spool(spool, work, fingerprint)
            # what is left of each source: its key, and the windows of a retry of failed tiles
            left = [
                None if w is None else [w.key, None if w.key == s.key else _windows(w)]
                for s, w in zip(sources, work)
            ]
            mark = f"run-{uuid.uuid4().hex}"  # for the others to find: is the spool shared?
            (spool / mark).write_text(socket.gethostname())
            payload = [{"work": left, "spooled": sorted(spooled), "mark": mark}]
    except BaseException as exc:
        payload = [{"error": f"{type(exc).__name__}: {exc}", "kind": type(exc).__name__,
                    "message": str(exc), "param": getattr(exc, "param", None)}]  # fmt: skip
        dist.broadcast_object_list(payload, src=0)
        if writer is not None:
            writer.close()
        raise
    dist.broadcast_object_list(payload, src=0)
    plan = payload[0]
    if "error" in plan:
        raise _process_zero_error(plan, path)
    try:
        _check_shared_spool(spool / plan["mark"], rank, world)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    spooled = set(plan["spooled"])
    work: list[Source | None] = [
        None if w is None else sources[i] if w[1] is None else retry_source(sources[i], *w)
        for i, w in enumerate(plan["work"])
    ]
    todo = [i for i, w in enumerate(work) if w is not None and i not in spooled]
    owners = dict(zip(todo, assign_sources([len(work[i].items) for i in todo], world)))
    mine = [i for i in todo if owners[i] == rank]
    committed = sum(w is None for w in work)
    logger.info(
        "process %d of %d: %d of %d sources to encode (%d committed, %d spooled)",
        rank, world, len(mine), len(sources), committed, len(spooled),
    )  # fmt: skip
    # one process: the encoding's own bar; several: process 0 shows the group's progress (the
    # images of the sources added to the index, in plan order, whoever encoded them) rather than
    # its own share, after which it waited for the others with no bar moving
    encoded = encode_sources(
        model, preprocess, [work[i] for i in mine], mine, min_valid=min_valid,
        nodata=nodata, batch_size=batch_size, workers=workers,
        progress=progress and rank == 0 and world == 1, abort_on=abort_on,
    )  # fmt: skip
    if rank != 0:
        report.skipped_done = committed
        beat = _Heartbeat(spool, rank) if mine else None
        try:
            for n, done in enumerate(encoded, 1):
                if n == len(mine) and beat is not None:
                    beat.stop()  # none after the last spooled source: process 0 clears them
                _write_spool(spool, done, work[done.position].key, fingerprint)
                report.failures += done.failures
                report.nodata += done.nodata
                report.added += 0 if done.unreadable else 1
                report.rows += 0 if done.unreadable else len(done.embeddings)
                if on_source is not None:
                    on_source(done.position)
        except BaseException as exc:
            if beat is not None:
                beat.stop()
            with contextlib.suppress(OSError):  # for process 0, when nothing stops it
                (spool / f"failed-{rank}").write_text(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if beat is not None:
                beat.stop()
        return report

    assert writer is not None
    # plan order; a queue: a list sliced at each source cost O(n^2) (minutes for 10^5 sources)
    pending = deque(i for i, w in enumerate(work) if w is not None)
    own: dict[int, EncodedSource] = {}
    last_commit = time.monotonic()
    watch = _Watch(spool, owners, work)
    group_bar = progress and world > 1
    bar = progress_bar(
        total=sum(len(work[i].items) for i in pending),  # type: ignore[union-attr]
        desc=f"index ({world} processes)", unit="img", disable=not group_bar,
    )  # fmt: skip
    with bar, writer:  # a failure still commits what was added (whole sources), as one process does
        for done in encoded:
            own[done.position] = done
            if on_source is not None:
                on_source(done.position)
            last_commit = _ingest(
                writer, work, pending, own, spool, fingerprint, report, commit_seconds,
                last_commit, bar.update,
            )  # fmt: skip
        while pending:  # the rest comes from the other processes
            before = len(pending)
            last_commit = _ingest(
                writer, work, pending, own, spool, fingerprint, report, commit_seconds,
                last_commit, bar.update,
            )  # fmt: skip
            if len(pending) == before:
                watch.check(pending[0])
                time.sleep(_POLL_SECONDS)
        writer.commit()
        report.count = writer.count
    drop_spool(Path(path))
    return report


class _Heartbeat:
    """A process's sign of life while it has sources left to spool: a counter in
    ``spool/alive-<rank>`` that a thread rewrites every ``_BEAT_SECONDS`` (its changes, not the
    file's time, count: the machines' clocks may differ)."""

    def __init__(self, spool: Path, rank: int) -> None:
        self.path = spool / f"alive-{rank}"
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msclip-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while True:
            n += 1
            with contextlib.suppress(OSError):  # a full disk: the spooling says so
                self.path.write_text(str(n))
            if self._done.wait(_BEAT_SECONDS):
                return

    def stop(self) -> None:
        """End the signs (once the last one is written; again: nothing)."""
        self._done.set()
        self._thread.join()


class _Watch:
    """Process 0's view of the processes it waits for: one that failed (``spool/failed-<rank>``,
    its error) or gave no sign of life for ``_SILENCE_SECONDS`` stops the build with a
    :class:`ProcessGroupError`, rather than a wait for good."""

    def __init__(self, spool: Path, owners: dict[int, int], work: Sequence[Source | None]):
        self.spool, self.owners, self.work = spool, owners, work
        self.seen: dict[int, tuple[str | None, float]] = {}  # rank -> (last sign, when seen)

    def check(self, position: int) -> None:
        """Raise when the process that encodes source ``position`` has stopped."""
        rank = self.owners.get(position, 0)
        if rank == 0:
            return
        source = self.work[position]
        what = source.key if source is not None else f"source {position}"
        resume = (
            "the sources committed and spooled so far are kept: rerun the same command to "
            "resume (with any number of processes)"
        )
        try:
            error = (self.spool / f"failed-{rank}").read_text()
        except OSError:
            error = None
        if error is not None:
            raise ProcessGroupError(
                f"process {rank} stopped before it encoded {what} ({error}; its output says "
                f"more); {resume}"
            )
        try:
            sign: str | None = (self.spool / f"alive-{rank}").read_text()
        except OSError:
            sign = None
        now = time.monotonic()
        last = self.seen.get(rank)
        if last is None or last[0] != sign:
            self.seen[rank] = (sign, now)
        elif now - last[1] > _SILENCE_SECONDS:
            raise ProcessGroupError(
                f"process {rank} has given no sign of life for {now - last[1]:.0f} s, and {what}, "
                f"which it encodes, is not in {self.spool} (the process was killed, or its "
                f"machine lost); {resume}"
            )


def _check_shared_spool(mark: Path, rank: int, world: int) -> None:
    """Refuse, in every process alike, a spool some process cannot see: on a machine whose
    index path is a folder of its own (a local disk), a process would spool its share there,
    and process 0 wait for it. ``mark`` is the file process 0 wrote in its spool."""
    import torch.distributed as dist

    if world == 1:
        return
    seen = rank == 0 or _appears(mark)
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, (seen, socket.gethostname()))
    blind = [(r, host) for r, (ok, host) in enumerate(everyone) if not ok]
    if blind:
        more = f" and {len(blind) - 3} more" if len(blind) > 3 else ""
        listed = ", ".join(f"process {r} (on {host})" for r, host in blind[:3]) + more
        raise ProcessGroupError(
            f"{listed} cannot see what process 0 (on {everyone[0][1]}) writes in the index "
            f"{mark.parent.parent}: the processes hand their encodings to process 0 through "
            "its spool folder, so across machines the index must be on storage every machine "
            "sees (NFS, a cluster file system), under the same path"
        )


def _appears(path: Path) -> bool:
    """Whether ``path`` is a file here, within ``_SHARED_WAIT_SECONDS`` (a network file
    system may show another machine's new file a little later)."""
    end = time.monotonic() + _SHARED_WAIT_SECONDS
    while not path.is_file():
        if time.monotonic() > end:
            return False
        time.sleep(_POLL_SECONDS * 4)
    return True


def _clear_signs(spool: Path) -> None:
    """Remove the processes' signs of life and failures (:class:`_Heartbeat`, :class:`_Watch`),
    and the marks of runs (:func:`_check_shared_spool`)."""
    for pattern in SPOOL_SIGNS:
        for f in spool.glob(pattern):
            f.unlink(missing_ok=True)


def _plan_identity(
    sources: Sequence[Source], model: Any, settings: dict[str, Any], fingerprint: str
) -> dict[str, Any]:
    """What every process of a sharded build must share: its sources (keys and windows, as a
    digest, their number and the first key), the settings that shape their rows and the model
    (its description, less what only informs: the checkpoint's path, why the precision)."""
    import hashlib

    plan = json.dumps([[s.key, _windows(s)] for s in sources])
    about = {k: v for k, v in model_info(model).items()
             if k not in ("checkpoint_path", "precision_reason", "fingerprint")}  # fmt: skip
    return {
        "sources": len(sources),
        "digest": hashlib.sha256(plan.encode()).hexdigest(),
        "first": sources[0].key if sources else None,
        "settings": settings,
        "model": about,
        "precision_reason": getattr(model, "precision_reason", None),
        "fingerprint": fingerprint,
    }


def _check_same_plan(mine: dict[str, Any], world: int) -> None:
    """Refuse, in every process alike, a group whose processes differ in their inputs, settings
    or model (:func:`_plan_identity`); an error naming the first process that differs from
    process 0 and what differs."""
    import torch.distributed as dist

    everyone: list[Any] = [None] * world
    if world > 1:
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    base = everyone[0]
    for rank, other in enumerate(everyone):
        if other["fingerprint"] == base["fingerprint"] and other["digest"] == base["digest"]:
            continue
        raise _plan_mismatch(base, other, rank)


def _plan_mismatch(base: dict[str, Any], other: dict[str, Any], rank: int) -> InvalidArgumentError:
    """The error of :func:`_check_same_plan` for process ``rank``: what differs from process 0,
    the model first (its image size sets the default tile), then the reading settings (they
    set the windows), then the sources."""
    same = ("; every process of a sharded build (torchrun) must be given the same arguments and "
            "read the same files")  # fmt: skip

    def differences(part: str) -> list[str]:
        keys = sorted(set(base[part]) | set(other[part]))
        return [k for k in keys if base[part].get(k) != other[part].get(k)]

    def shown(part: str, keys: list[str]) -> str:
        out = []
        for k in keys:
            theirs, ours = repr(other[part].get(k)), repr(base[part].get(k))
            long = max(len(theirs), len(ours)) > 60  # band lists, weight hashes, statistics
            out.append(f"{k} (differ)" if long else f"{k} {theirs} (process 0: {ours})")
        return ", ".join(out)

    diff = differences("model")
    if diff or other["fingerprint"].split()[0] != base["fingerprint"].split()[0]:
        what = shown("model", diff) or (
            f"fingerprint {other['fingerprint'].split()[0]} (process 0: "
            f"{base['fingerprint'].split()[0]})"
        )
        hint = ""
        if "precision" in diff:
            hint = (
                f"; process {rank} chose {other['model'].get('precision')} "
                f"({other['precision_reason']}), process 0 {base['model'].get('precision')} "
                f"({base['precision_reason']}): give every process one precision (an automatic "
                "one is chosen for each machine's processor)"
            )
        return InvalidArgumentError(
            f"process {rank} encodes with another model than process 0: {what}{same}{hint}",
            param="precision" if diff == ["precision"] else "model_name",
        )
    diff = differences("settings")
    if diff:
        return InvalidArgumentError(
            f"process {rank} reads its sources with other settings than process 0: "
            f"{shown('settings', diff)}{same}",
            param={"tile": "tile_size", "stride": "stride"}.get(diff[0]),
        )
    return InvalidArgumentError(
        f"process {rank} plans other sources than process 0: {other['sources']} (the first "
        f"{other['first']}) against {base['sources']} (the first {base['first']}){same}; "
        "relative paths are read from each process's working folder (give absolute paths when "
        "the machines start in other folders), and a folder must list the same files on every "
        "machine (storage every machine sees)",
        param="images",
    )


def _windows(source: Source) -> list[list[int]]:
    return [[t.row, t.col, t.height, t.width] for t in source.tiles or []]


def _spool_key(
    model: Any, preprocess: Any, tile: int, stride: int | None, min_valid: float, nodata: Any
) -> str:
    """What a spooled source must have been encoded with to be taken by this build: the model
    (its fingerprint) and every setting that changes a source's rows (the tiling, the nodata
    rule, the band reading). A rerun with another ``--stride`` after a killed build would
    otherwise commit the windows of the old tiling under the new one's record."""
    settings = _read_settings(preprocess, tile, stride, min_valid, nodata)
    return f"{model.fingerprint()} {json.dumps(settings, sort_keys=True)}"


def _read_settings(
    preprocess: Any, tile: int, stride: int | None, min_valid: float, nodata: Any
) -> dict[str, Any]:
    """The settings that change a source's rows (see :func:`_spool_key`), as JSON values."""
    read = getattr(preprocess, "_read_settings", None)
    return {
        "tile": int(tile),
        "stride": int(stride or tile),
        "min_valid": min_valid,
        "nodata": None if nodata is None else repr(float(nodata)),
        "read": {k: repr(v) for k, v in (read() if callable(read) else {}).items()},
        "strict_bands": bool(getattr(preprocess, "strict_bands", False)),
    }


def _usable_spool(spool: Path, work: Sequence[Source | None], fingerprint: str) -> set[int]:
    """Positions of spooled encodings a previous run left that can be used as they are; spooled
    files of committed sources, of other sources, of another model or of a file that changed
    since are removed."""
    usable = set()
    for f in sorted(spool.glob("source-*.npz")):
        try:
            pos = int(f.stem.split("-")[1])
        except (IndexError, ValueError):
            continue
        w = work[pos] if 0 <= pos < len(work) else None
        if w is not None and _read_spool(f, w.key, fingerprint, w.stamp) is not None:
            usable.add(pos)
        else:
            f.unlink(missing_ok=True)
    return usable


def _ingest(
    writer: IndexWriter,
    sources: Sequence[Source | None],
    pending: deque[int],
    own: dict[int, EncodedSource],
    spool: Path,
    fingerprint: str,
    report: BuildReport,
    commit_seconds: float,
    last_commit: float,
    on_added: Callable[[int], Any] | None = None,
) -> float:
    """Add the next sources in plan order while they are available (own or spooled), taking
    them off the front of ``pending`` (``on_added`` gets each one's item count); returns the time
    of the last commit."""
    while pending:
        pos = pending[0]
        done = own.pop(pos, None)
        if done is None:
            path = _spool_file(spool, pos)
            if not path.is_file():
                break
            done = _read_spool(path, sources[pos].key, fingerprint)  # type: ignore[union-attr]
            if done is None:
                raise RuntimeError(
                    f"spooled encoding {path} is unreadable or from another model; remove "
                    f"{spool} and rerun the build"
                )
        source = sources[pos]
        assert source is not None  # pending holds only sources left to encode
        staged = add_encoded(writer, source, done, report)
        if staged and time.monotonic() - last_commit >= commit_seconds:
            writer.commit()
            last_commit = time.monotonic()
        pending.popleft()
        if on_added is not None:
            on_added(len(source.items))
    return last_commit
