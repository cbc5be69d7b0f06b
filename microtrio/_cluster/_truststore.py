"""The truststore: one YAML file per trusted member in ``<state>/truststore/``.

Each file ``<name>.yaml`` holds ``name``, ``address`` and ``certificate`` (PEM). A TLS
request is trusted when one of its client certificates is byte-identical (DER) to a
truststore certificate that is within its validity period (reference 2.2).

Reloading: microcluster watches the directory with inotify. We keep it cheap and
portable instead: :meth:`Truststore.refresh` compares the directory's file names and
``(mtime_ns, size)`` with the last load and reloads only on a change;
:meth:`Truststore.watch` calls it every ``interval`` seconds on a trio task, and the
daemon may also call it on demand. Writes made through this object update memory at once.

All methods except :meth:`watch` do blocking file I/O on small files; daemon code calls
them via ``trio.to_thread.run_sync`` (the in-memory lookups are pure and cheap).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

import trio
import yaml

from .._certs import cert_der, cert_pem, is_within_validity, load_certificate
from .._errors import NotFoundError, StateError, ValidationError
from .._state import atomic_write
from ._names import validate_address, validate_name

__all__ = ["TrustedMember", "Truststore"]

logger = logging.getLogger("microtrio.cluster")


@final
@dataclass(frozen=True, slots=True)
class TrustedMember:
    """A truststore entry (the ``ClusterMemberLocal`` wire shape)."""

    name: str
    address: str
    certificate: str
    """PEM text."""

    @property
    def der(self) -> bytes:
        return cert_der(self.certificate)

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "address": self.address, "certificate": self.certificate}

    @classmethod
    def from_dict(cls, data: object) -> TrustedMember:
        """Validate the ``{name, address, certificate}`` shape; ValidationError if wrong."""
        if not isinstance(data, dict):
            raise ValidationError("truststore entry must be a mapping")
        name, address, cert = data.get("name"), data.get("address"), data.get("certificate")
        if not isinstance(cert, str):
            raise ValidationError("truststore entry: 'certificate' must be a PEM string")
        return cls(
            name=validate_name(name),
            address=validate_address(address),
            certificate=cert_pem(load_certificate(cert)),
        )


_Snapshot = dict[str, tuple[int, int]]


@final
class Truststore:
    """The in-memory view of ``truststore/`` plus the operations that change it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self._members: dict[str, TrustedMember] = {}
        self._by_der: dict[bytes, TrustedMember] = {}
        self._snapshot: _Snapshot | None = None
        self._lock = threading.Lock()
        self._generation = 0

    # -- loading ---------------------------------------------------------------------

    def _scan(self) -> _Snapshot:
        result: _Snapshot = {}
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return result
        except OSError as exc:
            raise StateError(f"Cannot read truststore {self.directory}: {exc}") from exc
        for entry in entries:
            if entry.name.endswith(".yaml") and not entry.name.startswith("."):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # removed since the listing (a member leaving): not there
                except OSError as exc:
                    raise StateError(f"Cannot read truststore file {entry.path}: {exc}") from exc
                result[entry.name] = (st.st_mtime_ns, st.st_size)
        return result

    def load(self) -> list[TrustedMember]:
        """(Re)load every file; a malformed file raises StateError naming it."""
        with self._lock:
            snapshot = self._scan()
            members: dict[str, TrustedMember] = {}
            for filename in sorted(snapshot):
                path = self.directory / filename
                member = self._read_file(path)
                if member is None:  # removed since the scan
                    del snapshot[filename]
                    continue
                if member.name in members:
                    raise StateError(f"Duplicate truststore entry {member.name!r} in {path}")
                members[member.name] = member
            self._set(members)
            self._snapshot = snapshot
            return list(members.values())

    @staticmethod
    def _read_file(path: Path) -> TrustedMember | None:
        """The member in ``path``; None if the file is gone."""
        try:
            data: Any = yaml.safe_load(path.read_text())
            return TrustedMember.from_dict(data)
        except FileNotFoundError:
            return None
        # ValueError: bad UTF-8, or a YAML scalar like 2001-13-45 that fails to construct.
        except (OSError, yaml.YAMLError, ValidationError, ValueError, RecursionError) as exc:
            raise StateError(f"Malformed truststore file {path}: {exc}") from exc

    def refresh(self) -> bool:
        """Reload if any file was added, removed or changed since the last load."""
        if self._snapshot is not None and self._scan() == self._snapshot:
            return False
        self.load()
        logger.info("truststore %s reloaded (%d members)", self.directory, len(self._members))
        return True

    async def watch(
        self,
        *,
        interval: float = 1.0,
        on_error: Callable[[StateError], None] | None = None,
        on_reload: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Poll for edits every ``interval`` seconds until cancelled.

        After a reload ``on_reload()`` is called. A malformed file keeps the previous view;
        the error goes to ``on_error`` (default: logged) and loading is retried on the next
        change.
        """
        task_status.started()
        while True:
            await trio.sleep(interval)
            try:
                if await trio.to_thread.run_sync(self.refresh) and on_reload is not None:
                    on_reload()
            except StateError as exc:
                self._snapshot = await trio.to_thread.run_sync(self._scan)
                if on_error is not None:
                    on_error(exc)
                else:
                    logger.warning("truststore reload failed: %s", exc, exc_info=True)

    def _set(self, members: dict[str, TrustedMember]) -> None:
        self._members = members
        self._by_der = {m.der: m for m in members.values()}
        self._generation += 1  # after the change: a reader that saw it sees the new entries

    @property
    def generation(self) -> int:
        """Changes whenever the entries may have changed (for callers that cache lookups:
        read it before the lookup)."""
        return self._generation

    # -- lookups ---------------------------------------------------------------------

    def members(self) -> list[TrustedMember]:
        """All entries, sorted by name."""
        return [self._members[k] for k in sorted(self._members)]

    def __len__(self) -> int:
        return len(self._members)

    def by_name(self, name: str) -> TrustedMember | None:
        return self._members.get(name)

    def by_address(self, address: str) -> TrustedMember | None:
        for member in self._members.values():
            if member.address == address:
                return member
        return None

    def by_certificate(self, cert: bytes | str) -> TrustedMember | None:
        """The member whose certificate is byte-identical (DER) to ``cert`` (PEM or DER)."""
        try:
            der = cert_der(cert)
        except ValidationError:
            return None
        return self._by_der.get(der)

    def trusted_member(
        self, chain: Sequence[bytes | str] | None, *, now: datetime.datetime | None = None
    ) -> TrustedMember | None:
        """The member matching any certificate of ``chain`` and valid at ``now``, else None.

        ``None`` or an empty chain (the caller could not see a certificate) is untrusted.
        """
        for cert in chain or ():
            member = self.by_certificate(cert)
            if member is not None and is_within_validity(member.certificate, now):
                return member
        return None

    # -- changes ---------------------------------------------------------------------

    def add(self, member: TrustedMember) -> None:
        """Add or replace the entry ``member.name`` (atomic file write); ValidationError if
        the name, address or certificate is invalid."""
        member = TrustedMember.from_dict(member.to_dict())
        with self._lock:
            self._write(member)
            members = dict(self._members)
            members[member.name] = member
            self._set(members)
            self._snapshot = self._scan()

    def remove(self, name: str) -> TrustedMember:
        """Delete the entry ``name``; NotFoundError if there is none."""
        with self._lock:
            member = self._members.get(name)
            if member is None:
                raise NotFoundError(f"Truststore entry {name!r} not found")
            try:
                (self.directory / f"{name}.yaml").unlink(missing_ok=True)
            except OSError as exc:
                raise StateError(f"Cannot remove truststore entry {name!r}: {exc}") from exc
            members = dict(self._members)
            del members[name]
            self._set(members)
            self._snapshot = self._scan()
            return member

    def replace_all(self, members: Iterable[TrustedMember]) -> None:
        """Make the truststore hold exactly ``members`` (files written, extras removed).

        An entry whose file is as this object last loaded or wrote it (same name, size
        and modification time) and equal to the wanted one is left alone: a heartbeat
        round calls this on every member with entries that rarely change, and each
        rewrite costs two fsyncs. A file edited, added or removed behind our back since
        the last load is written again."""
        checked = [TrustedMember.from_dict(m.to_dict()) for m in members]
        wanted = {m.name: m for m in checked}
        with self._lock:
            on_disk = self._scan()
            known = self._snapshot or {}
            changed = False
            for member in wanted.values():
                filename = f"{member.name}.yaml"
                stat = on_disk.get(filename)
                if (
                    stat is not None
                    and known.get(filename) == stat
                    and self._members.get(member.name) == member
                ):
                    continue
                self._write(member)
                changed = True
            for filename in on_disk:
                if filename[: -len(".yaml")] not in wanted:
                    (self.directory / filename).unlink(missing_ok=True)
                    changed = True
            if changed or wanted != self._members:
                self._set(wanted)
            self._snapshot = self._scan() if changed else on_disk

    def _write(self, member: TrustedMember) -> None:
        validate_name(member.name)
        text = yaml.safe_dump(member.to_dict(), sort_keys=False)
        try:
            self.directory.mkdir(mode=0o700, exist_ok=True)
            atomic_write(self.directory / f"{member.name}.yaml", text, 0o644)
        except OSError as exc:
            raise StateError(f"Cannot write truststore entry {member.name!r}: {exc}") from exc
