from __future__ import annotations

import datetime
import os
from functools import partial
from pathlib import Path

import pytest
import trio
import yaml

from microtrio import NotFoundError, StateError, ValidationError
from microtrio._certs import CertKeyPair, cert_der, generate_cert_key_pair
from microtrio._cluster._truststore import TrustedMember, Truststore


def _member(name: str, address: str, pair: CertKeyPair) -> TrustedMember:
    return TrustedMember(name, address, pair.cert.decode())


def test_add_load_lookup(
    tmp_path: Path, server_pair: CertKeyPair, client_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    store = Truststore(tmp_path / "truststore")
    a = _member("a", "127.0.0.1:8001", server_pair)
    b = _member("b.example", "[::1]:8002", client_pair)
    store.add(a)
    store.add(b)
    data = yaml.safe_load((tmp_path / "truststore" / "a.yaml").read_text())
    assert data == {"name": "a", "address": "127.0.0.1:8001", "certificate": a.certificate}

    fresh = Truststore(tmp_path / "truststore")
    assert fresh.load() == [a, b]
    assert fresh.members() == [a, b] and len(fresh) == 2
    assert fresh.by_name("b.example") == b and fresh.by_name("zz") is None
    assert fresh.by_address("[::1]:8002") == b and fresh.by_address("1.1.1.1:1") is None
    assert fresh.by_certificate(server_pair.cert) == a  # PEM
    assert fresh.by_certificate(cert_der(client_pair.cert)) == b  # DER
    assert fresh.by_certificate(other_pair.cert) is None  # same name, other bytes
    assert fresh.by_certificate(b"junk") is None


def test_trusted_member_needs_a_visible_valid_certificate(
    tmp_path: Path, server_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    store = Truststore(tmp_path)
    store.add(_member("a", "127.0.0.1:8001", server_pair))
    assert store.trusted_member(None) is None
    assert store.trusted_member([]) is None
    assert store.trusted_member([other_pair.cert]) is None
    assert store.trusted_member([other_pair.cert, server_pair.cert.decode()]) is not None
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=4000)
    assert store.trusted_member([server_pair.cert], now=later) is None  # expired


def test_expired_certificate_is_not_trusted(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3700)
    old = generate_cert_key_pair("old", now=past)
    store = Truststore(tmp_path)
    store.add(_member("old", "127.0.0.1:1", old))
    assert store.by_certificate(old.cert) is not None
    assert store.trusted_member([old.cert]) is None


def test_remove_and_replace_all(
    tmp_path: Path, server_pair: CertKeyPair, client_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    store = Truststore(tmp_path)
    store.add(_member("a", "127.0.0.1:8001", server_pair))
    store.add(_member("b", "127.0.0.1:8002", client_pair))
    assert store.remove("a").name == "a"
    assert not (tmp_path / "a.yaml").exists()
    with pytest.raises(NotFoundError):
        store.remove("a")
    c = _member("c", "127.0.0.1:8003", other_pair)
    store.replace_all([c])
    assert sorted(os.listdir(tmp_path)) == ["c.yaml"]
    assert store.members() == [c]
    assert store.by_certificate(client_pair.cert) is None


def test_replace_all_writes_only_what_changed(
    tmp_path: Path, server_pair: CertKeyPair, client_pair: CertKeyPair, other_pair: CertKeyPair
) -> None:
    """Heartbeat rounds call replace_all with the same entries again and again: a file
    that is as the store left it is not rewritten (atomic_write renames a new inode in),
    one changed on disk behind its back, or removed, is written again."""
    store = Truststore(tmp_path)
    a = _member("a", "127.0.0.1:8001", server_pair)
    b = _member("b", "127.0.0.1:8002", client_pair)
    store.replace_all([a, b])

    def inodes() -> dict[str, int]:
        return {name: os.stat(tmp_path / name).st_ino for name in sorted(os.listdir(tmp_path))}

    before, generation = inodes(), store.generation
    store.replace_all([a, b])
    assert inodes() == before and store.generation == generation
    assert store.members() == [a, b]

    b2 = _member("b", "127.0.0.1:9002", client_pair)  # same name, new address
    store.replace_all([a, b2])
    after = inodes()
    assert after["a.yaml"] == before["a.yaml"] and after["b.yaml"] != before["b.yaml"]
    assert store.by_name("b") == b2 and store.generation != generation
    assert yaml.safe_load((tmp_path / "b.yaml").read_text())["address"] == "127.0.0.1:9002"

    # edited behind the store's back (a different size): written again
    (tmp_path / "a.yaml").write_text("name: a\n")
    (tmp_path / "b.yaml").unlink()
    store.replace_all([a, b2])
    assert Truststore(tmp_path).load() == [a, b2]

    # a store that never loaded its directory writes every entry
    fresh, seen = Truststore(tmp_path), inodes()
    c = _member("c", "127.0.0.1:8003", other_pair)
    fresh.replace_all([a, b2, c])
    assert all(inodes()[name] != seen[name] for name in seen)
    assert Truststore(tmp_path).load() == [a, b2, c]


@pytest.mark.parametrize(
    "content",
    [
        "name: [unclosed",
        "- just a list",
        "name: a\naddress: 127.0.0.1:1\ncertificate: not a pem",
        "name: bad_name\naddress: 127.0.0.1:1\ncertificate: CERT",
        "name: a\naddress: nowhere\ncertificate: CERT",
    ],
)
def test_malformed_file_names_it(tmp_path: Path, server_pair: CertKeyPair, content: str) -> None:
    (tmp_path / "broken.yaml").write_text(content.replace("CERT", '"' + "x" + '"'))
    if "CERT" in content:
        entry = {"name": "bad_name" if "bad_name" in content else "a"}
        entry["address"] = "nowhere" if "nowhere" in content else "127.0.0.1:1"
        entry["certificate"] = server_pair.cert.decode()
        (tmp_path / "broken.yaml").write_text(yaml.safe_dump(entry))
    with pytest.raises(StateError, match="broken.yaml"):
        Truststore(tmp_path).load()


def test_from_dict_validates() -> None:
    with pytest.raises(ValidationError):
        TrustedMember.from_dict({"name": "a", "address": "127.0.0.1:1", "certificate": 5})


def test_refresh_sees_external_edits(
    tmp_path: Path, server_pair: CertKeyPair, client_pair: CertKeyPair
) -> None:
    store = Truststore(tmp_path)
    store.load()
    assert not store.refresh()  # nothing changed
    other = Truststore(tmp_path)
    other.add(_member("x", "127.0.0.1:9", client_pair))
    assert store.refresh() and store.by_name("x") is not None
    assert not store.refresh()
    (tmp_path / "x.yaml").unlink()
    assert store.refresh() and store.by_name("x") is None


async def test_watch_reloads_and_survives_a_bad_file(
    tmp_path: Path, client_pair: CertKeyPair
) -> None:
    # Real clock: the reload runs in a worker thread, which would make autojump_clock
    # race through any deadline.
    store = Truststore(tmp_path)
    store.load()
    errors: list[StateError] = []
    reloaded, failed = trio.Event(), trio.Event()

    def on_error(exc: StateError) -> None:
        errors.append(exc)
        failed.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            watch = partial(store.watch, interval=0.02, on_error=on_error, on_reload=reloaded.set)
            await nursery.start(watch)
            Truststore(tmp_path).add(_member("x", "127.0.0.1:9", client_pair))
            await reloaded.wait()
            assert store.by_name("x") is not None
            (tmp_path / "y.yaml").write_text("name: [broken")
            await failed.wait()
            assert "y.yaml" in str(errors[0])
            assert store.by_name("x") is not None  # previous view kept
            nursery.cancel_scope.cancel()


def test_add_validates(tmp_path: Path, server_pair: CertKeyPair) -> None:
    store = Truststore(tmp_path)
    pem = server_pair.cert.decode()
    for bad in (
        TrustedMember("bad_name", "127.0.0.1:1", pem),
        TrustedMember("a", "somewhere:1", pem),
        TrustedMember("a", "127.0.0.1:1", "not a certificate"),
    ):
        with pytest.raises(ValidationError):
            store.add(bad)
    assert os.listdir(tmp_path) == [] and len(store) == 0


@pytest.mark.parametrize("gone_before", ["stat", "read"])
def test_a_file_removed_during_a_reload_is_just_gone(
    tmp_path: Path,
    server_pair: CertKeyPair,
    client_pair: CertKeyPair,
    monkeypatch: pytest.MonkeyPatch,
    gone_before: str,
) -> None:
    # the watcher lists the directory while a member's removal deletes its file: the
    # reload must see the member as removed, not fail (it once crashed the daemon)
    store = Truststore(tmp_path)
    a = _member("a", "127.0.0.1:8001", server_pair)
    store.add(a)
    store.add(_member("b", "127.0.0.1:8002", client_pair))
    store.load()
    if gone_before == "stat":
        real_scandir = os.scandir

        def scandir_then_remove(path: str | Path) -> list[os.DirEntry[str]]:
            entries = list(real_scandir(path))
            (tmp_path / "b.yaml").unlink(missing_ok=True)
            return entries

        monkeypatch.setattr(os, "scandir", scandir_then_remove)
    else:
        real_read = Path.read_text

        def remove_then_read(self: Path, *args: object, **kwargs: object) -> str:
            if self.name == "b.yaml":
                self.unlink()
            return real_read(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "read_text", remove_then_read)
    (tmp_path / "a.yaml").touch()  # a change, so that refresh reloads
    assert store.refresh()
    assert store.members() == [a]
    monkeypatch.undo()
    assert not store.refresh()  # the snapshot taken left b out: nothing changed since
