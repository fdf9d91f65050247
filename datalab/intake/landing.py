"""The landing zone: every push gets a receipt at once, and no byte is lost.

A push copies each file into staging while hashing it, checks its structure
against the contract (streamed, never loaded whole), then moves the bytes
into the firm's own area, content-addressed and read-only:
``landing/<tenant>/accepted/<sha[:2]>/<sha256>`` or ``.../quarantine/...``
for rejected deliveries, which are kept with their reasons, never dropped.
The receipt, its files and the audit entry are written in one transaction,
after the bytes are in place, so a crash leaves a receipt complete or absent.
Re-pushing identical bytes under the same contract returns the first receipt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import queue
import re
import secrets
import shutil
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from datalab.config import Settings, settings
from datalab.contracts.contract import Contract
from datalab.errors import MissingFile
from datalab.intake.formats import FileRejected, describe, sniff
from datalab.intake.receipts import (  # noqa: F401  (re-exported: the receipt store's names, read from here by callers)
    DEFAULT_RECEIPT_LIMIT,
    MAX_REASONS,
    MAX_RECEIPT_LIMIT,
    FileReceipt,
    Receipt,
    _receipt_by_key,
    add_warnings,
    bound_reasons,
    get_receipt,
    list_receipts,
    safe_name,
    stored_files,
)
from datalab.kinds import kind_of
from datalab.store import catalog as cat
from datalab.store.storage import store

if TYPE_CHECKING:
    import polars as pl

Progress = Callable[[str, int, int], None]  # (file name, bytes done, bytes total)
# The copy into staging reads into one reused buffer of this size. Fresh
# 8 MB ``bytes`` per read made the kernel map and fault in new pages for
# every chunk: copying a 542 MB file took 0.8-1.5 s of CPU, against
# 0.37-0.40 s for a reused 1 MB buffer (docs/performance.md).
CHUNK = 1 << 20
# Progress is reported at most once per this many bytes (and at the end).
PROGRESS_EVERY = 8 << 20


def new_delivery_id() -> str:
    return f"d-{datetime.now(UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"


def _write_all(f: Any, data: memoryview) -> None:
    """Write all of ``data`` to the unbuffered file ``f`` (a raw write may take part of it)."""
    while data:
        n = f.write(data)
        if not n:
            raise OSError(f"{f.name}: the write took no bytes")
        data = data[n:]


class _ThreadHash(ABC):
    """A SHA-256 computed on a thread: ``digest`` ends the thread (``stop``) and re-raises what failed on it."""

    _h: Any
    _error: BaseException | None

    @abstractmethod
    def stop(self) -> None:
        """Let the thread hash what it was given, and join it."""

    def digest(self) -> str:
        self.stop()
        if self._error is not None:
            raise self._error
        return self._h.hexdigest()


class _Hasher(_ThreadHash):
    """SHA-256 of the chunks handed to it, on its own thread, while the caller writes them.

    Hashing a chunk and writing it took about the same time each (0.56 and
    0.23 s for 542 MB, 2 cores), one after the other on the one thread,
    before the push could start parsing; hashlib and the raw write both
    release the GIL, so the two now run side by side (measured in
    docs/performance.md). The chunks live in a ring of ``RING`` buffers:
    :meth:`buffer` hands out the next one once the hasher is done with it,
    so a chunk is never overwritten before it was hashed. A file of at most
    ``THREAD_FROM`` chunks is hashed on the caller's thread, in one buffer:
    a thread and a ring would cost more than they save there (a push of many
    small files).
    """

    RING = 3
    THREAD_FROM = 4

    def __init__(self, size: int) -> None:
        self._h = hashlib.sha256()
        ring = self.RING if size > self.THREAD_FROM * CHUNK else 1
        self._bufs = [bytearray(CHUNK) for _ in range(ring)]
        self._free = threading.Semaphore(ring)
        self._q: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._next = 0
        self._thread: threading.Thread | None = None
        if ring > 1:
            self._thread = threading.Thread(target=self._run, name="datalab-stage-hash", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (chunk := self._q.get()) is not None:
            try:
                if self._error is None:
                    self._h.update(chunk)
            except BaseException as e:  # raised on the caller's thread by digest()
                self._error = e
            finally:
                self._free.release()

    def buffer(self) -> bytearray:
        """The next buffer to read into (waits until the hasher has finished with it)."""
        self._free.acquire()
        buf = self._bufs[self._next]
        self._next = (self._next + 1) % len(self._bufs)
        return buf

    def put(self, chunk: memoryview) -> None:
        if self._thread is None:  # a small file: hashed here
            self._h.update(chunk)
            self._free.release()
        else:
            self._q.put(chunk)

    def unused(self) -> None:
        """The buffer last handed out holds nothing to hash (end of file)."""
        self._free.release()

    def stop(self) -> None:
        """End the hasher's thread (with no digest asked for: the copy failed)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()


class _Reported:
    """Bytes staged so far, reported to ``progress`` at most every ``PROGRESS_EVERY`` bytes and at the end."""

    def __init__(self, progress: Progress | None, name: str, total: int) -> None:
        self.progress, self.name, self.total = progress, name, total
        self.done = self._reported = 0

    def add(self, n: int) -> None:
        self.done += n
        if self.progress and (self.done - self._reported >= PROGRESS_EVERY or self.done == self.total):
            self._report()

    def end(self) -> int:
        """Report the last bytes, if not yet; the bytes staged."""
        if self.progress and self.done != self._reported:
            self._report()
        return self.done

    def _report(self) -> None:
        assert self.progress is not None
        self.progress(self.name, self.done, self.total)
        self._reported = self.done


# Bytes per ``copy_file_range`` call of the kernel copy (``_KernelCopy``).
KERNEL_STEP = 8 << 20
# errno values with which ``copy_file_range`` says it cannot copy these two
# files (another file system, an old kernel, a pipe): the copy goes through
# this process instead.
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM}


class _KernelCopy(_ThreadHash):
    """``src`` copied to ``dst`` by the kernel (``copy_file_range``), hashed from ``dst`` behind the copy.

    Written through this process (read into a buffer, written out), the
    542 MB staging copy of a 10 M-row delivery took 0.7-1.4 s of system
    time on a 2-core VM, most of the push's time before parsing could start;
    the kernel copies the same file page cache to page cache in 0.15-0.23 s
    (``benchmarks/hot_paths.py``, docs/performance.md). The hash cannot come
    from the copy, so a thread reads back what the copy has put in ``dst``
    (from the page cache) and hashes it: the digest is of the bytes stored,
    whatever happens to ``src`` meanwhile, as it was when the bytes passed
    through one buffer. ``dst`` is the lab's own staging file; nothing else
    writes it.
    """

    def __init__(self, dst_fd: int, name: str) -> None:
        self._fd = dst_fd
        self._name = name  # the pushed file's name, for the error
        self._h = hashlib.sha256()
        self._copied = 0  # bytes of dst the copy has finished
        self._hashed = 0
        self._finished = False
        self._error: BaseException | None = None
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="datalab-stage-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        try:
            while True:
                with self._cv:
                    while self._hashed == self._copied and not self._finished:
                        self._cv.wait()
                    end, finished = self._copied, self._finished
                while self._hashed < end:
                    n = os.preadv(self._fd, [view[:min(CHUNK, end - self._hashed)]], self._hashed)
                    if n <= 0:
                        raise OSError(f"{self._name}: {end - self._hashed:,} bytes copied into staging from byte "
                                      f"{self._hashed:,} on could not be read back to hash them (rule: a receipt's hash is of the bytes stored)")
                    self._h.update(view[:n])
                    self._hashed += n
                if finished:
                    return
        except BaseException as e:  # raised on the caller's thread by digest()
            self._error = e

    def advance(self, n: int) -> None:
        with self._cv:
            self._copied += n
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._finished = True
            self._cv.notify()
        self._thread.join()


def _stage_in_kernel(src: Path, dst: Path, total: int, name: str, progress: Progress | None) -> tuple[str, int, bool] | None:
    """``_stage`` by the kernel's copy (``_KernelCopy``); None where the kernel cannot copy these files."""
    copy_file_range = getattr(os, "copy_file_range", None)
    if copy_file_range is None:  # not Linux
        return None
    staged = _Reported(progress, name, total)
    with open(src, "rb", buffering=0) as fin, open(dst, "w+b", buffering=0) as fout:
        hasher = _KernelCopy(fout.fileno(), name)
        try:
            while True:
                try:
                    n = copy_file_range(fin.fileno(), fout.fileno(), KERNEL_STEP)
                except OSError as e:
                    if staged.done == 0 and e.errno in _NO_KERNEL_COPY:
                        hasher.stop()
                        return None
                    raise
                if not n:
                    break
                hasher.advance(n)
                staged.add(n)
        except BaseException:
            hasher.stop()
            raise
        sha = hasher.digest()
    return sha, staged.end(), False


def _stage(src: Path, dst: Path, limit: int, name: str, progress: Progress | None) -> tuple[str, int, bool]:
    """Copy ``src`` to ``dst`` while hashing; stops storing past ``limit``.

    Returns (sha256, bytes, over_limit). The hash always covers the whole
    file, so the receipt identifies exactly what was pushed. A file larger
    than ``_Hasher.THREAD_FROM`` chunks is copied by the kernel where it can
    (``_KernelCopy``); a small one, one over the limit (hashed, not stored)
    and one the kernel cannot copy pass through this process (``_Hasher``).
    """
    total = src.stat().st_size
    if limit >= total > _Hasher.THREAD_FROM * CHUNK:
        staged = _stage_in_kernel(src, dst, total, name, progress)
        if staged is not None:
            return staged
    hasher = _Hasher(total)
    staged = _Reported(progress, name, total)
    over = total > limit
    try:
        with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
            while True:
                buf = hasher.buffer()
                n = fin.readinto(buf)
                if not n:
                    hasher.unused()
                    break
                chunk = memoryview(buf)[:n]
                hasher.put(chunk)
                if not over:
                    _write_all(fout, chunk)
                staged.add(n)
    except BaseException:
        hasher.stop()
        raise
    sha = hasher.digest()
    return sha, staged.end(), over


def _idem_key(contract: Contract, shas: list[str]) -> str:
    """The key of an accepted delivery: the same bytes under the same contract version are the same delivery."""
    body = json.dumps([contract.tenant, contract.id, contract.version, sorted(shas)])
    return hashlib.sha256(body.encode()).hexdigest()


def contract_digest(contract: Contract) -> str:
    """SHA-256 of the contract's content (its parsed document): what its checks depend on besides the bytes."""
    return hashlib.sha256(json.dumps(contract.raw, sort_keys=True, default=str).encode()).hexdigest()


def _rejection_key(contract: Contract, staged: list) -> str:
    """The key of a rejected delivery: the bytes, their file names and the contract's content.

    A rejection depends on more than the bytes: a file name (a matrix
    layout reads the sensor from it, side files are told by their names)
    and every field of the contract, which may change without a new
    version. Replaying a rejection is right only when all of these are the
    same; an acceptance replays for the same bytes whatever their names.
    """
    body = json.dumps(["rejected", contract.tenant, contract.id, contract.version, contract_digest(contract),
                       sorted((x[2], x[0]) for x in staged)])
    return hashlib.sha256(body.encode()).hexdigest()


_RULE = re.compile(r"\(rule: ([^)]+)\)")


def decided_by(status: str, reasons: list[str], contract: Contract) -> str:
    """The rule(s) that decided a fresh receipt's status, for people."""
    if status == "accepted":
        return f"every landing check of contract {contract.id} {contract.version} passed (format, size, schema, types, required values)"
    rules: list[str] = []
    for r in reasons:
        for m in _RULE.findall(r):
            if m not in rules:
                rules.append(m)
    return "rejected by " + (", ".join(f"rule {x}" for x in rules) if rules else f"the landing checks of contract {contract.id} {contract.version}") \
        + f" ({len(reasons)} reason(s))"


def _replayed(existing: Receipt, contract: Contract) -> Receipt:
    existing.duplicate = True
    existing.decided_by = (f"idempotency: the same bytes{' under the same file names and contract content' if existing.status == 'rejected' else ''} "
                           f"were pushed under {contract.id} {existing.contract_version} as delivery {existing.delivery_id} "
                           f"({existing.status}); {existing.decided_by or 'its receipt stands'}")
    return existing


def push(
    contract: Contract,
    files: list[Path | tuple[str, Path]],
    actor: str = "cli",
    progress: Progress | None = None,
    s: Settings | None = None,
    correction: bool = False,
) -> Receipt:
    """Land one delivery (one or more files) under ``contract``; returns its receipt.

    ``correction``: the delivery corrects readings already delivered; its
    readings replace earlier ones with the same key (entity, time, sensor)
    in the next version instead of being excluded as repeats (issue 23).
    """
    s = s or settings()
    catalog = cat.Catalog(s.catalog_url)
    if not files:
        raise ValueError("a delivery needs at least one file")
    staging = s.staging / secrets.token_hex(8)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        staged: list[tuple[str, Path, str, int, bool]] = []
        for item in files:
            name, src = (item if isinstance(item, tuple) else (item.name, item))
            name = safe_name(name)
            src = Path(src)
            if not src.is_file():
                raise MissingFile(f"{src}: no such file")
            dst = staging / f"{len(staged):04d}"
            sha, size, over = _stage(src, dst, contract.max_file_bytes, name, progress)
            staged.append((name, dst, sha, size, over))
        return _land(contract, staged, actor, catalog, s, correction)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def land_staged(
    contract: Contract, staged: list[tuple[str, Path, str, int, bool]], actor: str, s: Settings | None = None,
    correction: bool = False, with_receipt: Callable[[Connection, Receipt], None] | None = None,
) -> Receipt:
    """Land files already staged by the caller (the HTTP service streams them to disk itself).

    ``staged`` holds (safe name, staged path, sha256, bytes, over_limit) per
    file; the staged files are moved or removed. Two identical pushes racing
    each other both pass the duplicate check; the loser's insert hits the
    unique idempotency key, and it answers with the winner's receipt.
    ``with_receipt``: the caller's own write, run in the transaction that
    records a new receipt (the service completes its Idempotency-Key there:
    one write transaction fewer per push); not run for a replayed receipt.
    """
    s = s or settings()
    catalog = cat.Catalog(s.catalog_url)
    try:
        return _land(contract, staged, actor, catalog, s, correction, with_receipt)
    except sa.exc.IntegrityError:
        existing = (_receipt_by_key(catalog, _idem_key(contract, [x[2] for x in staged]))
                    or _receipt_by_key(catalog, _rejection_key(contract, staged)))
        if existing is None:
            raise
        return _answer_duplicate(existing, contract, actor, catalog)


def _check_file(contract: Contract, name: str, path: Path, size: int, over: bool, sink: Any = None,
                side: Any = None) -> FileReceipt:
    """Check one staged file; its parsed batches go to ``sink`` (a RawWriter) if given.

    ``side``: the delivery's side tables by role (datalab.intake.measurement.sidefiles), if its layout has any.
    """
    fr = FileReceipt(name=name, sha256="", bytes=size, rows=None, format=None, compression=None)
    if over:
        fr.reasons.append(
            f"{name}: {size:,} bytes exceeds the contract's limit of {contract.max_file_bytes:,} bytes "
            "(rule: limits.max_file_bytes); the bytes were not stored"
        )
        return fr
    try:
        sn = sniff(path, name, contract.layout.delimiter)
    except FileRejected as e:
        fr.reasons += e.reasons
        return fr
    fr.format, fr.compression = describe(sn), sn.compression
    rows, problems = kind_of(contract).read_file(contract, name, path, sn, sink, side)
    fr.rows = rows
    fr.reasons += problems
    if not problems and rows == 0:
        fr.reasons.append(f"{name}: no data rows (rule: rowCount > 0)")
    return fr


def _land(contract: Contract, staged: list, actor: str, catalog: cat.Catalog, s: Settings,
          correction: bool = False, with_receipt: Callable[[Connection, Receipt], None] | None = None) -> Receipt:
    """Land staged files: replay an earlier receipt, or check, store and record a new one, in that order.

    The order is what makes a crash safe: the raw table and the files are in
    place (renamed from their staged names) before the receipt is committed,
    so a receipt is complete or absent, and nothing is stored for a replay.
    """
    existing = _earlier_receipt(contract, staged, catalog)
    if existing is not None:
        return _answer_duplicate(existing, contract, actor, catalog)
    reasons = _contract_reasons(contract, s)
    delivery_id = new_delivery_id()
    kind = kind_of(contract)
    sink = kind.raw_writer(contract, delivery_id, s)
    # Some kinds check a delivery's files together (CAD: parsed in parallel, each in its own sandbox).
    together = kind.check_staged(contract, [(n, p, sha, size, over) for n, p, sha, size, over in staged], s)
    side, side_receipts, side_reasons = _side_files(contract, staged)
    reasons += side_reasons
    checked, file_reasons = _check_files(contract, staged, reasons, sink, together, side, side_receipts)
    reasons += file_reasons
    status = "rejected" if reasons else "accepted"
    key = _rejection_key(contract, staged) if status == "rejected" else _idem_key(contract, [x[2] for x in staged])
    warnings = _settle_raw(sink, status, contract)
    if sink is not None and status == "accepted":
        store(s).save(sink.path)  # with an object store: uploaded before the receipt exists
    stored = _store_files(checked, contract, "accepted" if status == "accepted" else "quarantine", s)
    rec = Receipt(
        delivery_id=delivery_id,
        tenant=contract.tenant,
        contract_id=contract.id,
        contract_version=contract.version,
        status=status,
        reasons=bound_reasons(reasons),
        bytes=sum(fr.bytes for fr, _, _ in checked),
        rows=sum(fr.rows or 0 for fr, _, _ in checked),
        received_at=cat.now_iso(),
        pushed_by=actor,
        files=[fr for fr, _, _ in checked],
        decided_by=decided_by(status, reasons, contract),
        warnings=warnings,
        correction=correction,
    )
    try:
        _record(catalog, rec, key, stored, actor, contract, with_receipt)
    except BaseException:
        if sink is not None and status == "accepted":
            store(s).remove(sink.path)  # no receipt, so no raw table either
        raise
    return rec


def _earlier_receipt(contract: Contract, staged: list, catalog: cat.Catalog) -> Receipt | None:
    """The receipt this push repeats, if any: an acceptance of the same bytes, or the same rejection.

    A rejection keyed by its bytes alone (landed before issue 23) has an
    unknown cause (names, contract), so it is not replayed; its key is
    retired so this push can land under it.
    """
    existing = _receipt_by_key(catalog, _idem_key(contract, [x[2] for x in staged]))
    if existing is not None and existing.status == "rejected":
        _retire_key(catalog, existing.delivery_id)
        existing = None
    return existing or _receipt_by_key(catalog, _rejection_key(contract, staged))


def _answer_duplicate(existing: Receipt, contract: Contract, actor: str, catalog: cat.Catalog) -> Receipt:
    """Answer a repeated push with the first receipt, marked as a replay, and audit it as a duplicate."""
    _replayed(existing, contract)
    catalog.audit(actor, "push", existing.delivery_id, "duplicate",
                  {"contract": contract.id, "tenant": contract.tenant, "of": existing.delivery_id})
    return existing


def _contract_reasons(contract: Contract, s: Settings) -> list[str]:
    """Reasons against any delivery under this contract, whatever its files: not active, or withdrawn."""
    reasons: list[str] = []
    if contract.status != "active":
        reasons.append(f"contract {contract.id} is {contract.status}; pushes need an active contract (rule: status)")
    # Sovereignty: a contract its firm withdrew takes no more data.
    from datalab.policy.withdrawals import withdrawn_reason

    if (why := withdrawn_reason(contract.id, s)) is not None:
        reasons.append(why)
    return reasons


def _side_files(contract: Contract, staged: list) -> tuple[Any, dict[int, FileReceipt], list[str]]:
    """The delivery's side files (a measurement layout's tables beside the data), told from its data files.

    Returns the side tables by role, the side files' receipts by position and
    the reasons against them; nothing for a layout without side files.
    """
    if contract.layout.measurement is not None and contract.layout.measurement.side_files:
        from datalab.intake.measurement.sidefiles import split_side

        return split_side(contract, staged)
    return None, {}, []


def _check_files(contract: Contract, staged: list, prior: list[str], sink: Any, together: Any, side: Any,
                 side_receipts: dict[int, FileReceipt]) -> tuple[list[tuple[FileReceipt, Path, bool]], list[str]]:
    """Each staged file's receipt (with its staged path and over-limit flag) and the reasons they give.

    A file is read into the raw table (``sink``) only while the delivery has
    no reason against it yet (``prior`` and the files before): a rejected
    delivery writes no raw rows. If checking fails the raw table is aborted.
    """
    checked: list[tuple[FileReceipt, Path, bool]] = []
    found: list[str] = []
    try:
        for i, (name, path, sha, size, over) in enumerate(staged):
            if i in side_receipts:
                fr = side_receipts[i]
            elif together is not None:
                fr = together[i]
            else:
                fr = _check_file(contract, name, path, size, over, None if (prior or found) else sink, side)
            fr.sha256 = sha
            fr.reasons = bound_reasons(fr.reasons)
            found += fr.reasons
            checked.append((fr, path, over))
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    return checked, found


def _settle_raw(sink: Any, status: str, contract: Contract) -> list[str]:
    """Commit the raw table of an accepted delivery (abort it otherwise); the receipt's duplicate warnings.

    The raw table exists only for an accepted delivery; it is in place
    before the receipt is committed, so a receipt never lacks it.
    """
    if sink is None:
        return []
    sink.commit() if status == "accepted" else sink.abort()
    return _duplicate_warnings(contract, sink.path, getattr(sink, "keys", None)) if status == "accepted" else []


def _store_files(checked: list[tuple[FileReceipt, Path, bool]], contract: Contract, area: str, s: Settings) -> list[str]:
    """Move each staged file to ``landing/<tenant>/<area>/<sha[:2]>/<sha256>``, read-only; the stored paths.

    A file over the size limit was never stored (its path is ""); bytes
    already landed are not written twice. A staged file is made read-only,
    then renamed into place (``os.replace``, atomic), so a content address
    never holds part of a file, whenever the process stops. With an object
    store the file is then uploaded (an object appears whole or not at all)
    and this machine's copy dropped: all before the receipt is recorded.
    """
    st = store(s)
    stored: list[str] = []
    for fr, path, over in checked:
        if over:
            stored.append("")
            continue
        rel = f"landing/{contract.tenant}/{area}/{fr.sha256[:2]}/{fr.sha256}"
        if st.exists(rel):
            path.unlink()
        else:
            dst = st.local(rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o444)
            os.replace(path, dst)
            st.save(dst)
        stored.append(rel)
    return stored


def _record(catalog: cat.Catalog, rec: Receipt, key: str, stored: list[str], actor: str, contract: Contract,
            with_receipt: Callable[[Connection, Receipt], None] | None = None) -> None:
    """Receipt, files and audit entry in one transaction (with the caller's ``with_receipt`` write, if any)."""
    reasons, status = rec.reasons, rec.status
    with catalog.begin() as conn:
        # statements built once, parameters per push (cat.deliveries.insert() and a dict: the compiled
        # statement is reused, where .values(...) built and compiled a new one for every receipt)
        conn.execute(cat.deliveries.insert(), dict(
            id=rec.delivery_id, tenant=rec.tenant, contract_id=rec.contract_id,
            contract_version=rec.contract_version, status=rec.status, reasons=json.dumps(reasons),
            bytes=rec.bytes, rows=rec.rows, idem_key=key, received_at=rec.received_at, pushed_by=actor,
        ))
        if rec.correction or rec.warnings or rec.decided_by:
            conn.execute(cat.delivery_meta.insert(), dict(
                delivery_id=rec.delivery_id, correction=rec.correction, warnings=json.dumps(rec.warnings),
                decided_by=rec.decided_by))
        files = [dict(
            delivery_id=rec.delivery_id, position=i, name=fr.name, sha256=fr.sha256, bytes=fr.bytes,
            rows=fr.rows, format=fr.format, compression=fr.compression, stored_path=rel,
            reasons=json.dumps(fr.reasons),
        ) for i, (fr, rel) in enumerate(zip(rec.files, stored, strict=True))]
        if files:  # (an empty parameter list would run the insert once with no values)
            conn.execute(cat.delivery_files.insert(), files)
        catalog.audit(actor, "push", rec.delivery_id, status, {
            "contract": contract.id, "tenant": contract.tenant, "bytes": rec.bytes, "rows": rec.rows,
            "sha256": [f.sha256 for f in rec.files], "reasons": len(reasons),
        }, conn=conn)
        if with_receipt is not None:
            with_receipt(conn, rec)


# Above this many rows the push does not count duplicate keys itself (its
# hash set would grow with the delivery); curation's count reaches the
# receipt instead, through add_warnings.
DUPLICATE_CHECK_MAX_ROWS = 20_000_000
# Up to this many rows the push counts duplicate keys in memory (three columns; a few MB).
SMALL_DELIVERY_ROWS = 1_000_000
# How far Polars' estimate of the distinct keys (HyperLogLog, 2^14 registers: a standard error
# of 0.81 %) is taken to err at most: between three and four standard errors. Measured on random
# keys: standard deviations of 0.64-0.95 % in 75 trials of 1.1 to 10 M keys, none past 1.9 %;
# on keys shaped like a delivery's (one sensor, three machines, a reading a second): up to 2.5 %.
ESTIMATE_MARGIN = 0.03


def _duplicate_warnings(contract: Contract, raw: Path, keys: pl.DataFrame | None = None) -> list[str]:
    """The receipt's warning when the delivery's rows repeat keys past the contract's max_duplicate_share.

    Counted on the raw table the push just wrote (distinct keys by their
    hash; a large delivery is screened by an estimate first, below), so the
    firm learns at once that curation would remove or flag that many rows;
    the suite then fails (validate.lab_rules). ``keys``: the key columns of
    every row written, where the writer kept them (a small delivery's),
    counted without reading the file.
    """
    import polars as pl

    from datalab.contracts.raw_table import KEY, duplicate_warning

    rows = keys.height if keys is not None else pl.scan_parquet(raw).select(pl.len()).collect().item()  # from the footer
    if not rows or rows > DUPLICATE_CHECK_MAX_ROWS:
        return []  # curation counts them anyway and adds its warning to the receipt (add_warnings)
    distinct = _key_hash().n_unique()
    if keys is not None:
        found = keys.select(distinct).item()
    elif rows <= SMALL_DELIVERY_ROWS:  # three columns read at once cost less than a streaming query's set-up
        found = pl.read_parquet(raw, columns=KEY).select(distinct).item()
    else:
        # A large delivery is first screened by an estimate (one streaming pass, a few kB of
        # state): when even the fewest distinct keys the estimate allows leave the duplicates
        # under the contract's share, there is no warning to give, and the exact count (a hash
        # set of every key: 1.5 s of CPU and 0.8 s of a 10 M-row push) is not made. Only a
        # delivery near or over the share is counted exactly. Should the estimate ever err by
        # more than its margin, the push misses a warning that curation's exact count then adds
        # to the receipt (add_warnings), as it does past DUPLICATE_CHECK_MAX_ROWS.
        estimate = pl.scan_parquet(raw).select(_key_hash().approx_n_unique()).collect(engine="streaming").item()
        if rows - estimate / (1 + ESTIMATE_MARGIN) <= contract.curation.max_duplicate_share * rows:
            return []
        found = _distinct_keys(raw)
    dup = rows - found
    return [duplicate_warning(dup, rows, contract.curation.max_duplicate_share)] \
        if dup / rows > contract.curation.max_duplicate_share else []


def _key_hash() -> pl.Expr:
    """A row's key (entity, time, sensor) as one 64-bit hash.

    Distinct keys are counted by it: faster than a group-by on the three
    columns (measured in docs/performance.md); a collision could only hide
    a duplicate, never invent one.
    """
    import polars as pl

    from datalab.contracts.raw_table import KEY

    return pl.struct(*KEY).hash(seed=23)


def _distinct_keys(raw: Path) -> int:
    """The exact number of distinct keys in a raw table, streaming."""
    import polars as pl

    return pl.scan_parquet(raw).select(_key_hash().n_unique()).collect(engine="streaming").item()


def _retire_key(catalog: cat.Catalog, delivery_id: str) -> None:
    """Give a delivery an idempotency key no push will compute (its receipt stays as it was)."""
    retired = hashlib.sha256(f"retired:{delivery_id}".encode()).hexdigest()
    with catalog.begin() as conn:
        conn.execute(cat.deliveries.update().where(cat.deliveries.c.id == delivery_id).values(idem_key=retired))


