"""The local artifact store: content addressing, manifests as commit markers, checksums, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from infra.settings import Settings
from infra.storage import (
    MANIFEST_NAME,
    ArtifactRef,
    ArtifactStore,
    LocalStore,
    Manifest,
    S3Store,
    StorageError,
    artifact_key,
    content_digest,
    open_store,
    sha256_file,
    store_for_uri,
)

ROOT = Path(__file__).resolve().parents[2]


def make_dir(base: Path, files: dict[str, bytes]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return base


def manifest_for(key: str, digest: str = "d1", **kw: object) -> Manifest:
    stage = key.split("/")[-2]
    return Manifest.create(key=key, digest=digest, stage=stage, round=1, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "artifacts", cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------- digests and keys


def test_content_digest_is_stable_and_order_independent() -> None:
    a = content_digest("trees", {"b": 2, "a": [1, 2]}, Path("/x"), {3, 1})
    b = content_digest("trees", {"a": [1, 2], "b": 2}, Path("/x"), {1, 3})
    assert a == b and len(a) == 16 and int(a, 16) >= 0
    assert content_digest("trees", {"a": [1, 2], "b": 3}) != content_digest("trees", {"a": [1, 2], "b": 2})
    assert content_digest("x", 1) != content_digest("x", "1")


def test_content_digest_is_the_same_in_another_process() -> None:
    code = "from infra.storage import content_digest; print(content_digest('sft', {'k': 2, 'seed': 7}, [1.5, None]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == content_digest("sft", {"seed": 7, "k": 2}, [1.5, None])


def test_content_digest_refuses_values_without_a_stable_encoding() -> None:
    with pytest.raises(TypeError, match="stably"):
        content_digest(object())


def test_artifact_keys() -> None:
    assert artifact_key(3, "trees", "abc123") == "rounds/3/trees/abc123"
    assert artifact_key(None, "problems", "abc123") == "shared/problems/abc123"
    for bad_stage in ("a/b", "", "../x"):
        with pytest.raises(ValueError):
            artifact_key(1, bad_stage, "abc")
    with pytest.raises(ValueError):
        artifact_key(-1, "trees", "abc")


def test_manifest_json_round_trip_ignores_unknown_fields() -> None:
    m = manifest_for("rounds/1/sft/d1", parents=[{"role": "trees", "uri": "file:///t", "digest": "t1"}], rows=5)
    data = json.loads(m.to_json())
    data["added_by_newer_code"] = 1
    back = Manifest.from_dict(data)
    assert back == m
    assert back.git_commit == m.git_commit and back.created_at
    with pytest.raises(ValueError, match="lacks"):
        Manifest.from_dict({"key": "k"})


# ------------------------------------------------------------------------------------------------- put / get / list


def test_put_then_get_round_trip(store: LocalStore, tmp_path: Path) -> None:
    files = {"nodes.parquet": b"n" * 1000, "sub/problems.jsonl": b'{"id": 1}\n', "empty.txt": b""}
    src = make_dir(tmp_path / "src", files)
    key = artifact_key(1, "trees", "d1")
    parent = ArtifactRef(uri="file:///p", digest="p1", stage="problems").as_parent("problems")
    assert not store.exists(key)

    ref = store.put_artifact(key, src, manifest_for(key, parents=[parent], rows=7, metrics={"solve_rate": 0.5}))

    assert ref == ArtifactRef(uri=store.uri(key), digest="d1", rows=7, stage="trees", key=key)
    assert ref.uri.startswith("file://") and ref.uri.endswith("/rounds/1/trees/d1")
    assert store.exists(key)
    got = store.get_artifact(ref.uri)
    assert {p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()} == {*files, MANIFEST_NAME}
    for rel, data in files.items():
        assert (got / rel).read_bytes() == data
    m = store.read_manifest(key)
    assert m.parents == [parent] and m.rows == 7 and m.metrics == {"solve_rate": 0.5}
    assert m.files["nodes.parquet"] == {"sha256": sha256_file(src / "nodes.parquet")[0], "size": 1000}
    assert m.files["empty.txt"]["size"] == 0
    assert store.read_manifest(ref.uri) == m  # by URI or by key
    assert store.list_artifacts() == [key] and store.list_artifacts("rounds/1") == [key]
    assert store.list_artifacts("rounds/2") == [] and store.list_artifacts("rou") == [key]


def test_get_into_a_destination_copies(store: LocalStore, tmp_path: Path) -> None:
    key = artifact_key(2, "sft", "d2")
    store.put_artifact(key, make_dir(tmp_path / "src", {"sft.parquet": b"abc"}), manifest_for(key, "d2"))
    dest = store.get_artifact(key, dest=tmp_path / "copy")
    assert dest == tmp_path / "copy" and (dest / "sft.parquet").read_bytes() == b"abc"
    (dest / "sft.parquet").write_bytes(b"changed")  # the copy is private: the store keeps its bytes
    assert (store.get_artifact(key) / "sft.parquet").read_bytes() == b"abc"


def test_missing_artifact_is_a_clear_error(store: LocalStore) -> None:
    with pytest.raises(StorageError, match=r"no committed artifact .*rounds/9/trees/nope"):
        store.get_artifact("rounds/9/trees/nope")
    with pytest.raises(StorageError, match="no committed artifact"):
        store.read_manifest("rounds/9/trees/nope")


def test_folder_without_manifest_is_invisible(store: LocalStore, tmp_path: Path) -> None:
    """Files under a final key without a manifest (e.g. copied there by hand) are not an artifact."""
    key = "rounds/1/trees/half"
    make_dir(store.root / key, {"nodes.parquet": b"partial"})
    assert not store.exists(key)
    assert store.list_artifacts() == []
    with pytest.raises(StorageError, match="no committed artifact"):
        store.get_artifact(key)


def test_corrupted_file_is_detected_and_named(store: LocalStore, tmp_path: Path) -> None:
    key = artifact_key(1, "pairs", "d3")
    store.put_artifact(key, make_dir(tmp_path / "src", {"pairs.parquet": b"x" * 100}), manifest_for(key, "d3"))
    store.get_artifact(key)  # verified once (and remembered)
    target = store.root / key / "pairs.parquet"
    target.write_bytes(b"y" * 100)  # same size, different bytes, behind the store's back
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    with pytest.raises(StorageError, match=r"rounds/1/pairs/d3.*checksum mismatch for 'pairs.parquet'"):
        store.get_artifact(key)
    target.unlink()
    with pytest.raises(StorageError, match=r"'pairs\.parquet' listed in the manifest is missing"):
        store.get_artifact(key)


def test_rewriting_a_key_replaces_the_artifact_whole(store: LocalStore, tmp_path: Path) -> None:
    key = artifact_key(1, "trees", "d4")
    store.put_artifact(key, make_dir(tmp_path / "a", {"a.parquet": b"1", "old.txt": b"o"}), manifest_for(key, "d4"))
    store.put_artifact(key, make_dir(tmp_path / "b", {"a.parquet": b"22"}), manifest_for(key, "d4", rows=2))
    got = store.get_artifact(key)
    assert (got / "a.parquet").read_bytes() == b"22" and not (got / "old.txt").exists()
    assert store.read_manifest(key).rows == 2
    assert not list((store.root / ".trash").glob("*"))
    assert not any((store.root / ".tmp").glob("*"))


def test_manifest_key_must_match(store: LocalStore, tmp_path: Path) -> None:
    src = make_dir(tmp_path / "src", {"f": b"1"})
    with pytest.raises(StorageError, match="does not match"):
        store.put_artifact("rounds/1/trees/d5", src, manifest_for("rounds/1/trees/other"))


@pytest.mark.parametrize("bad", ["../escape", "/abs/../x", ".tmp/x", "a//b", ""])
def test_bad_keys_are_refused(store: LocalStore, tmp_path: Path, bad: str) -> None:
    with pytest.raises(StorageError):
        store.put_artifact(
            bad, make_dir(tmp_path / "src", {"f": b"1"}), Manifest(key="", digest="d", stage="s", round=None)
        )


def test_open_store_follows_settings(tmp_path: Path) -> None:
    local = open_store(Settings(home=tmp_path / "h"))
    assert isinstance(local, LocalStore) and local.root == tmp_path / "h" / "artifacts"
    assert isinstance(local, ArtifactStore)  # both stores satisfy the protocol tasks are written against
    s3 = open_store(Settings(home=tmp_path, artifact_url="s3://bkt/pre/fix", s3_endpoint_url="http://127.0.0.1:1"))
    assert isinstance(s3, S3Store) and isinstance(s3, ArtifactStore) and (s3.bucket, s3.prefix) == ("bkt", "pre/fix")
    assert s3.uri("rounds/1/trees/d") == "s3://bkt/pre/fix/rounds/1/trees/d"
    assert isinstance(store_for_uri("s3://other/x/y", Settings(home=tmp_path)), S3Store)
    assert isinstance(store_for_uri("file:///x/y", Settings(home=tmp_path)), LocalStore)
    with pytest.raises(StorageError):
        store_for_uri("gs://x/y", Settings(home=tmp_path))


def test_a_local_store_reads_file_uris_of_another_root(store: LocalStore, tmp_path: Path) -> None:
    other = LocalStore(tmp_path / "elsewhere")
    key = artifact_key(None, "problems", "p1")
    ref = other.put_artifact(key, make_dir(tmp_path / "src", {"p.jsonl": b"{}"}), manifest_for(key, "p1"))
    assert store.read_manifest(ref.uri).digest == "p1"
    assert (store.get_artifact(ref.uri) / "p.jsonl").read_bytes() == b"{}"


# ------------------------------------------------------------------------------------------------------ atomicity

_KILL_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import infra.storage as st

    real_copy = st._copy_file
    calls = []

    def slow_copy(src, dst):
        calls.append(src)
        if len(calls) == 2:  # one file written, the second half written: freeze here and wait to be killed
            with open(src, "rb") as f, open(dst, "wb") as out:
                out.write(f.read(1000))
                out.flush()
            print("MID-WRITE", flush=True)
            time.sleep(120)
        return real_copy(src, dst)

    st._copy_file = slow_copy
    store = st.LocalStore(sys.argv[1])
    key = "rounds/1/trees/killed"
    store.put_artifact(key, Path(sys.argv[2]), st.Manifest.create(key=key, digest="killed", stage="trees", round=1))
    print("FINISHED", flush=True)
    """
)


def test_killing_the_writer_mid_put_leaves_nothing_under_the_final_key(store: LocalStore, tmp_path: Path) -> None:
    src = make_dir(tmp_path / "src", {"a.parquet": b"a" * 5000, "b.parquet": b"b" * 5000, "c.parquet": b"c"})
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, str(store.root), str(src)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "MID-WRITE", proc.stderr.read() if proc.stderr else ""
        key = "rounds/1/trees/killed"
        assert not (store.root / key).exists()  # while it is being written ...
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # ... and after the writer died: no folder, no artifact, only scratch under .tmp that no reader looks at.
    assert not (store.root / key).exists()
    assert not store.exists(key) and store.list_artifacts() == []
    with pytest.raises(StorageError, match="no committed artifact"):
        store.get_artifact(key)
    leftovers = list((store.root / ".tmp").iterdir())
    assert len(leftovers) == 1 and (leftovers[0] / "b.parquet").stat().st_size == 1000
    # A re-run writes the artifact whole; the scratch can be swept.
    ref = store.put_artifact(key, src, Manifest.create(key=key, digest="killed", stage="trees", round=1))
    assert (store.get_artifact(ref.uri) / "b.parquet").read_bytes() == b"b" * 5000
    assert store.cleanup_tmp() == 0  # too fresh: it could belong to a writer still at work
    assert store.cleanup_tmp(older_than_s=0) == 1 and store.exists(key)
