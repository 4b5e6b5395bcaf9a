"""The S3 artifact store against a real S3 HTTP endpoint (moto's server mode, started by the test session).

Covers: key layout under the prefix, multipart uploads, the manifest written last, checksum verification on read
(an object corrupted behind the store's back), the download cache, what the user sees for a missing bucket, wrong
or missing credentials and an unreachable endpoint, and a writer killed in the middle of a multipart upload.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig

from infra.settings import Settings
from infra.storage import (
    MANIFEST_NAME,
    Manifest,
    S3Store,
    StorageError,
    artifact_key,
    open_store,
    sha256_file,
    store_for_uri,
)

from .conftest import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB, max_concurrency=2)


def make_dir(base: Path, files: dict[str, bytes]) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return base


def manifest(key: str, digest: str, **kw: Any) -> Manifest:
    return Manifest.create(key=key, digest=digest, stage=key.split("/")[-2], round=1, **kw)


def make_store(bucket: str, endpoint: str, tmp_path: Path, prefix: str = "exp") -> S3Store:
    return S3Store(
        f"s3://{bucket}/{prefix}", endpoint_url=endpoint, cache_dir=tmp_path / "cache", transfer_config=SMALL_PARTS
    )


def record_calls(store: S3Store) -> list[tuple[str, str]]:
    """(operation, key) of every S3 call the store's client makes from now on."""
    calls: list[tuple[str, str]] = []

    def hook(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, str(params.get("Key", ""))))

    store.client.meta.events.register("before-parameter-build.s3", hook)
    return calls


def test_put_get_layout_and_manifest_last(s3_bucket: str, moto_endpoint: str, s3_client: Any, tmp_path: Path) -> None:
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    files = {"nodes.parquet": b"n" * 3000, "sub/problems.parquet": b"p" * 10, "sub/manifest.json": b"{}"}
    key = artifact_key(1, "trees", "d1")
    calls = record_calls(store)

    ref = store.put_artifact(key, make_dir(tmp_path / "src", files), manifest(key, "d1", rows=3))

    assert ref.uri == f"s3://{s3_bucket}/exp/rounds/1/trees/d1" and ref.rows == 3 and ref.digest == "d1"
    listed = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert listed == [f"exp/{key}/{MANIFEST_NAME}", *(f"exp/{key}/{rel}" for rel in sorted(files))]
    writes = [(op, k) for op, k in calls if op in ("PutObject", "CreateMultipartUpload", "CompleteMultipartUpload")]
    assert writes[-1] == ("PutObject", f"exp/{key}/{MANIFEST_NAME}")  # the commit marker goes last
    assert len(writes) == 4
    head = s3_client.head_object(Bucket=s3_bucket, Key=f"exp/{key}/nodes.parquet")
    assert head["Metadata"]["sha256"] == sha256_file(tmp_path / "src" / "nodes.parquet")[0]

    assert store.exists(key) and not store.exists("rounds/1/trees/other")
    got = store.get_artifact(ref.uri)
    assert got == tmp_path / "cache" / "d1"
    assert all((got / rel).read_bytes() == data for rel, data in files.items())
    assert store.read_manifest(key).files["nodes.parquet"]["size"] == 3000
    assert store.list_artifacts() == [key] and store.list_artifacts("rounds/2") == []  # sub/manifest.json is a file


def test_multipart_upload_round_trip(s3_bucket: str, moto_endpoint: str, s3_client: Any, tmp_path: Path) -> None:
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    big = bytes(range(256)) * (11 * MIB // 256) + b"tail"  # 11 MiB + 4 bytes: three 5 MiB parts
    key = artifact_key(2, "train-policy", "m1")
    calls = record_calls(store)

    store.put_artifact(key, make_dir(tmp_path / "src", {"model/weights.bin": big}), manifest(key, "m1"))

    assert sum(op == "UploadPart" for op, _ in calls) == 3
    etag = s3_client.head_object(Bucket=s3_bucket, Key=f"exp/{key}/model/weights.bin")["ETag"]
    assert etag.strip('"').endswith("-3")  # S3's mark of a 3-part multipart object
    got = store.get_artifact(key)
    assert (got / "model" / "weights.bin").read_bytes() == big


def test_corrupted_object_is_detected_and_named(
    s3_bucket: str, moto_endpoint: str, s3_client: Any, tmp_path: Path
) -> None:
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    key = artifact_key(1, "pairs", "c1")
    store.put_artifact(key, make_dir(tmp_path / "src", {"pairs.parquet": b"good" * 100}), manifest(key, "c1"))
    s3_client.put_object(Bucket=s3_bucket, Key=f"exp/{key}/pairs.parquet", Body=b"evil" * 100)  # behind its back

    with pytest.raises(StorageError, match=r"rounds/1/pairs/c1.*checksum mismatch for 'pairs\.parquet'") as err:
        store.get_artifact(key)
    assert moto_endpoint in str(err.value)
    assert not (tmp_path / "cache" / "c1").exists()  # nothing corrupt was installed in the cache


def test_downloads_are_cached_until_the_artifact_changes(s3_bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    key = artifact_key(1, "sft", "s1")
    store.put_artifact(key, make_dir(tmp_path / "v1", {"sft.parquet": b"one"}), manifest(key, "s1"))
    first = store.get_artifact(key)
    calls = record_calls(store)
    assert store.get_artifact(key) == first
    assert [k for op, k in calls if op == "GetObject"] == [f"exp/{key}/{MANIFEST_NAME}"]  # the manifest only

    store.put_artifact(key, make_dir(tmp_path / "v2", {"sft.parquet": b"two!"}), manifest(key, "s1"))
    assert (store.get_artifact(key) / "sft.parquet").read_bytes() == b"two!"
    assert not (store.get_artifact(key) / "old").exists()


def test_rewrite_drops_objects_the_new_version_lacks(
    s3_bucket: str, moto_endpoint: str, s3_client: Any, tmp_path: Path
) -> None:
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    key = artifact_key(1, "trees", "r1")
    store.put_artifact(key, make_dir(tmp_path / "a", {"a": b"1", "stale": b"2"}), manifest(key, "r1"))
    store.put_artifact(key, make_dir(tmp_path / "b", {"a": b"3"}), manifest(key, "r1"))
    listed = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"exp/{key}/")["Contents"])
    assert listed == [f"exp/{key}/a", f"exp/{key}/{MANIFEST_NAME}"]


def test_artifact_without_manifest_is_invisible(
    s3_bucket: str, moto_endpoint: str, s3_client: Any, tmp_path: Path
) -> None:
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    s3_client.put_object(Bucket=s3_bucket, Key="exp/rounds/1/trees/h1/nodes.parquet", Body=b"data")
    assert not store.exists("rounds/1/trees/h1")
    assert store.list_artifacts() == []
    with pytest.raises(StorageError, match=r"no committed artifact at s3://.*/exp/rounds/1/trees/h1"):
        store.get_artifact("rounds/1/trees/h1")


def test_settings_and_uris_reach_the_same_objects(s3_bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, artifact_url=f"s3://{s3_bucket}/from-settings", s3_endpoint_url=moto_endpoint)
    store = open_store(settings)
    assert isinstance(store, S3Store)
    key = artifact_key(None, "problems", "p1")
    ref = store.put_artifact(key, make_dir(tmp_path / "src", {"problems.jsonl": b"{}\n"}), manifest(key, "p1"))
    reader = store_for_uri(ref.uri, Settings(home=tmp_path / "other", s3_endpoint_url=moto_endpoint))
    assert reader.read_manifest(ref.uri).digest == "p1"
    assert (reader.get_artifact(ref.uri) / "problems.jsonl").read_bytes() == b"{}\n"


# ---------------------------------------------------------------------------------------------- what users see


def test_missing_bucket_names_endpoint_and_bucket(moto_endpoint: str, aws_env: dict[str, str], tmp_path: Path) -> None:
    store = make_store("no-such-bucket-rstar", moto_endpoint, tmp_path)
    key = artifact_key(1, "trees", "x")
    src = make_dir(tmp_path / "src", {"f": b"1"})
    for action in (
        lambda: store.put_artifact(key, src, manifest(key, "x")),
        lambda: store.exists(key),
        lambda: S3Store("s3://no-such-bucket-rstar/p", endpoint_url=moto_endpoint).get_artifact(key),
    ):
        with pytest.raises(StorageError) as err:
            action()
        msg = str(err.value)
        assert moto_endpoint in msg and "no-such-bucket-rstar" in msg and "does not exist" in msg, msg
        assert "Traceback" not in msg and err.value.__cause__ is None


@pytest.fixture
def iam_enforced(moto_endpoint: str) -> Iterator[None]:
    """Make moto check signatures against IAM (unknown keys are refused) for one test, then switch it back off."""

    def reset_auth(value: str) -> None:
        req = urllib.request.Request(
            f"{moto_endpoint}/moto-api/reset-auth",
            data=value.encode(),
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form content type would hide the body from moto
        )
        urllib.request.urlopen(req, timeout=10).read()

    reset_auth("0")
    try:
        yield
    finally:
        reset_auth("inf")


def test_wrong_credentials_name_endpoint_and_bucket(
    s3_bucket: str, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, iam_enforced: None
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    key = artifact_key(1, "trees", "w")
    for action in (
        lambda: store.put_artifact(key, make_dir(tmp_path / "src", {"f": b"1"}), manifest(key, "w")),
        lambda: store.read_manifest(key),
    ):
        with pytest.raises(StorageError) as err:
            action()
        msg = str(err.value)
        assert moto_endpoint in msg and s3_bucket in msg and "refused" in msg and "AWS_ACCESS_KEY_ID" in msg, msg


def test_missing_credentials_say_so(
    s3_bucket: str, moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    with pytest.raises(StorageError, match=r"no usable credentials.*AWS_ACCESS_KEY_ID") as err:
        store.exists("rounds/1/trees/x")
    assert moto_endpoint in str(err.value) and s3_bucket in str(err.value)


@pytest.mark.slow
def test_unreachable_endpoint_says_so(aws_env: dict[str, str], tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = make_store("bucket", endpoint, tmp_path)
    with pytest.raises(StorageError, match=r"RSTAR_S3_ENDPOINT_URL") as err:
        store.exists("rounds/1/trees/x")
    assert endpoint in str(err.value) and "bucket" in str(err.value)


# ---------------------------------------------------------------------------------------------------- atomicity

_KILL_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from boto3.s3.transfer import TransferConfig
    import infra.storage as st

    url, endpoint, src, cache = sys.argv[1:5]
    config = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20, max_concurrency=2)
    store = st.S3Store(url, endpoint_url=endpoint, cache_dir=Path(cache), transfer_config=config)
    parts = []

    def on_part(params, **kw):
        parts.append(params.get("PartNumber"))
        if len(parts) == 2:  # the first part is on its way: freeze this one and wait to be killed
            print("MID-UPLOAD", flush=True)
            time.sleep(120)

    store.client.meta.events.register("before-parameter-build.s3.UploadPart", on_part)
    key = "rounds/1/trees/killed"
    store.put_artifact(key, Path(src), st.Manifest.create(key=key, digest="killed", stage="trees", round=1))
    print("FINISHED", flush=True)
    """
)


@pytest.mark.slow
def test_killing_the_writer_mid_multipart_leaves_no_object(
    s3_bucket: str, moto_endpoint: str, s3_client: Any, tmp_path: Path
) -> None:
    big = b"x" * (16 * MIB)
    src = make_dir(tmp_path / "src", {"a-big.bin": big, "z-small.txt": b"small"})
    url = f"s3://{s3_bucket}/exp"
    key = "rounds/1/trees/killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_CHILD, url, moto_endpoint, str(src), str(tmp_path / "child-cache")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "MID-UPLOAD", proc.stderr.read() if proc.stderr else ""
        assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"exp/{key}/")  # while writing
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    store = make_store(s3_bucket, moto_endpoint, tmp_path)
    assert "Contents" not in s3_client.list_objects_v2(Bucket=s3_bucket, Prefix=f"exp/{key}/")  # no partial object
    assert not store.exists(key) and store.list_artifacts() == []
    with pytest.raises(StorageError, match="no committed artifact"):
        store.get_artifact(key)
    uploads = s3_client.list_multipart_uploads(Bucket=s3_bucket, Prefix=f"exp/{key}/").get("Uploads", [])
    assert [u["Key"] for u in uploads] == [f"exp/{key}/a-big.bin"]  # it really died inside a multipart upload

    assert store.abort_incomplete_uploads("rounds/1") == 1
    assert not s3_client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    ref = store.put_artifact(key, src, Manifest.create(key=key, digest="killed", stage="trees", round=1))
    assert (store.get_artifact(ref.uri) / "a-big.bin").read_bytes() == big
