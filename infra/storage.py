"""Content-addressed artifact storage: one interface, a local-filesystem store and an S3 store.

    from infra.storage import open_store, artifact_key, content_digest, Manifest
    store = open_store()                                    # from settings: file://.rstar/artifacts or s3://bucket/prefix
    digest = content_digest("trees", inputs, config, seed)  # stable sha256 prefix of JSON-able parts
    key = artifact_key(3, "trees", digest)                  # "rounds/3/trees/<digest>"
    ref = store.put_artifact(key, local_dir, Manifest.create(key=key, digest=digest, stage="trees", round=3,
                                                             parents=[problems_ref.as_parent("problems")]))
    local = store.get_artifact(ref.uri)                     # a local folder, every checksum verified

An artifact is a folder of files stored under `<store url>/<key>/` with a `manifest.json` beside them. The manifest
names the artifact's parents (their URIs and digests), the models and config that made it, the git commit, and the
sha256 and size of every file. It is written last and is the commit marker: until it exists the artifact is invisible
(`exists` is False, `get_artifact` and `read_manifest` refuse), so a writer killed half way never leaves something that
looks complete. Writes are atomic per object: the local store builds the folder in `<root>/.tmp/` and renames it into
place; S3 objects (multipart included) only appear under their final key once complete.

Reads verify every file against the manifest's checksums; a mismatch raises `StorageError` naming the key and file.
S3 downloads are cached under `<cache_dir>/<digest>` and re-used while the stored manifest is unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from infra.settings import Settings, code_version, get_settings, git_commit

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig

MANIFEST_NAME = "manifest.json"
DIGEST_CHARS = 16
_CHUNK = 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
_INTERNAL_DIRS = (".tmp", ".trash")


class StorageError(RuntimeError):
    """An artifact cannot be stored or read; the message names the store endpoint, bucket and key involved."""


# --------------------------------------------------------------------------------------------------- digests and keys


def _json_default(obj: object) -> object:
    if isinstance(obj, Path):
        return obj.as_posix()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=repr)
    if isinstance(obj, bytes):
        return obj.hex()
    dump = getattr(obj, "model_dump", None)  # pydantic models (flow parameters)
    if callable(dump):
        return dump(mode="json")
    # Anything else would fall back to repr(), which may hold memory addresses: an unstable digest is a silent cache miss.
    raise TypeError(f"content_digest: cannot encode {type(obj).__name__} stably; pass JSON-able values")


def content_digest(*parts: object) -> str:
    """A stable digest (first 16 hex chars of sha256) of JSON-able parts: same parts, same digest, in any process.

    Dict keys are sorted; Paths, dataclasses, sets, bytes and pydantic models are encoded canonically.
    """
    payload = json.dumps(parts, sort_keys=True, default=_json_default, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def artifact_key(round_idx: int | None, stage: str, digest: str) -> str:
    """`rounds/<k>/<stage>/<digest>` (or `shared/<stage>/<digest>` outside a round); the store adds its prefix."""
    for what, value in (("stage", stage), ("digest", digest)):
        if not _NAME_RE.match(value):
            raise ValueError(f"artifact_key: {what} {value!r} must be a plain name ([A-Za-z0-9_.=-], no '/')")
    if round_idx is None:
        return f"shared/{stage}/{digest}"
    if round_idx < 0:
        raise ValueError(f"artifact_key: round {round_idx} < 0")
    return f"rounds/{round_idx}/{stage}/{digest}"


def _check_key(key: str) -> str:
    key = key.strip("/")
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or parts[0] in _INTERNAL_DIRS:
        raise StorageError(f"invalid artifact key {key!r}")
    return key


# ------------------------------------------------------------------------------------------- refs and manifests


@dataclass(frozen=True)
class ArtifactRef:
    """The small value a task returns to its flow: where an artifact is, its digest, and how many rows it holds."""

    uri: str
    digest: str
    rows: int | None = None
    stage: str = ""
    key: str = ""

    def as_parent(self, role: str) -> dict[str, Any]:
        """The entry a child's `Manifest.parents` lists for this artifact."""
        return {"role": role, "uri": self.uri, "digest": self.digest, "stage": self.stage}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Manifest:
    """`<key>/manifest.json`: what an artifact is made of and from. Written last: its presence commits the artifact."""

    key: str
    digest: str
    stage: str
    round: int | None
    parents: list[dict[str, Any]] = field(default_factory=list)  # [{"role": "problems", "uri": ..., "digest": ...}]
    config: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)  # {"policy": spec_or_uri, "ppm": ...}
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # relative path -> {"sha256": ..., "size": ...}
    rows: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    git_commit: str | None = None
    created_at: str = ""
    code_version: str = ""

    @classmethod
    def create(
        cls,
        *,
        key: str,
        digest: str,
        stage: str,
        round: int | None,
        parents: list[dict[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        models: Mapping[str, Any] | None = None,
        rows: int | None = None,
        metrics: Mapping[str, Any] | None = None,
    ) -> Manifest:
        """A manifest stamped with the current time, git commit and code version (`files` is filled by the store)."""
        return cls(
            key=key,
            digest=digest,
            stage=stage,
            round=round,
            parents=list(parents or []),
            config=dict(config or {}),
            models=dict(models or {}),
            rows=rows,
            metrics=dict(metrics or {}),
            git_commit=git_commit(),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            code_version=code_version(),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=_json_default, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"key", "digest", "stage", "round"} - set(data)
        if missing:
            raise ValueError(f"manifest lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})  # unknown fields from newer code are ignored

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls.from_dict(json.loads(text))


def _finalise(manifest: Manifest, key: str, files: dict[str, dict[str, Any]]) -> Manifest:
    if manifest.key and manifest.key.strip("/") != key:
        raise StorageError(f"manifest key {manifest.key!r} does not match the key it is stored under {key!r}")
    return dataclasses.replace(
        manifest,
        key=key,
        files=files,
        created_at=manifest.created_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        code_version=manifest.code_version or code_version(),
    )


def _ref(store_uri: str, manifest: Manifest) -> ArtifactRef:
    return ArtifactRef(
        uri=store_uri, digest=manifest.digest, rows=manifest.rows, stage=manifest.stage, key=manifest.key
    )


# ------------------------------------------------------------------------------------------------------- file helpers


def sha256_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _list_files(local_dir: Path) -> list[str]:
    """Relative POSIX paths of the regular files under `local_dir` (a top-level manifest.json is ours to write)."""
    if not local_dir.is_dir():
        raise StorageError(f"put_artifact: {local_dir} is not a directory")
    rels = []
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(local_dir).as_posix()
            if rel != MANIFEST_NAME:
                rels.append(rel)
    return rels


def _copy_file(src: Path, dst: Path) -> tuple[str, int]:
    """Copy `src` to `dst`, hashing the bytes as they are written, and fsync; returns (sha256, size)."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            h.update(chunk)
            size += len(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest(), size


def _write_text_durable(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _install_dir(tmp: Path, final: Path, trash_root: Path) -> None:
    """Move a fully written folder `tmp` to `final` atomically; an existing `final` is swapped out, then deleted.

    Readers see either the old complete folder, nothing (between the two renames), or the new complete folder.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        try:
            os.replace(tmp, final)
            return
        except OSError:
            if not final.exists():
                raise
        trash_root.mkdir(parents=True, exist_ok=True)
        old = trash_root / uuid.uuid4().hex
        with contextlib.suppress(FileNotFoundError):
            os.replace(final, old)
        try:
            os.replace(tmp, final)
            return
        except OSError:
            if not final.exists():
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    raise StorageError(f"could not install {final}: another writer keeps replacing it")


def _verify_file(path: Path, expected: Mapping[str, Any], *, where: str, rel: str) -> None:
    if not path.is_file():
        raise StorageError(f"{where}: file {rel!r} listed in the manifest is missing")
    digest, size = sha256_file(path)
    if size != expected.get("size") or digest != expected.get("sha256"):
        raise StorageError(
            f"{where}: checksum mismatch for {rel!r}: expected sha256 {expected.get('sha256')} "
            f"({expected.get('size')} bytes), found {digest} ({size} bytes); the stored object is corrupt"
        )


def _stat_or_none(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _cached_manifest_matches(folder: Path, manifest: Manifest) -> bool:
    """A cached copy is re-used only if it was installed for the same stored manifest and its file sizes still match."""
    try:
        cached = Manifest.from_json((folder / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return False
    if cached.key != manifest.key or cached.files != manifest.files or cached.created_at != manifest.created_at:
        return False
    return all(
        (folder / rel).is_file() and (folder / rel).stat().st_size == meta["size"]
        for rel, meta in manifest.files.items()
    )


# ------------------------------------------------------------------------------------------------------- the interface


@runtime_checkable
class ArtifactStore(Protocol):
    """Where artifacts live. Keys are store-relative (`rounds/3/trees/<digest>`); URIs are absolute."""

    url: str

    def uri(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def put_artifact(self, key: str, local_dir: Path, manifest: Manifest) -> ArtifactRef: ...
    def get_artifact(self, uri_or_key: str, dest: Path | None = None) -> Path: ...
    def read_manifest(self, uri_or_key: str) -> Manifest: ...
    def list_artifacts(self, prefix: str = "") -> list[str]: ...


# -------------------------------------------------------------------------------------------------------- local store


class LocalStore:
    """Artifacts as folders under a root directory (the embedded default, `<home>/artifacts`).

    `put_artifact` builds the folder under `<root>/.tmp/` and renames it into place, so the final path holds a complete
    artifact or nothing. `get_artifact` verifies checksums and returns the stored folder itself (treat it read-only)
    unless `dest` asks for a copy.
    """

    def __init__(self, root: Path | str, *, cache_dir: Path | None = None) -> None:
        root_str = str(root)
        if root_str.startswith("file://"):
            root_str = unquote(urlparse(root_str).path)
        self.root = Path(root_str).expanduser().absolute()
        self.url = self.root.as_uri()
        self.cache_dir = cache_dir
        self._verified: dict[Path, tuple[Any, ...]] = {}

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def uri(self, key: str) -> str:
        return (self.root / _check_key(key)).as_uri()

    def _path(self, uri_or_key: str) -> Path:
        if uri_or_key.startswith("file://"):
            return Path(unquote(urlparse(uri_or_key).path))
        if "://" in uri_or_key:
            raise StorageError(f"{self!r} cannot read {uri_or_key!r}: not a file:// URI or a key")
        return self.root / _check_key(uri_or_key)

    def exists(self, key: str) -> bool:
        return (self._path(key) / MANIFEST_NAME).is_file()

    def put_artifact(self, key: str, local_dir: Path, manifest: Manifest) -> ArtifactRef:
        key = _check_key(key)
        local_dir = Path(local_dir)
        rels = _list_files(local_dir)
        tmp = self.root / ".tmp" / uuid.uuid4().hex
        tmp.mkdir(parents=True)
        try:
            files: dict[str, dict[str, Any]] = {}
            for rel in rels:
                dst = tmp / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                digest, size = _copy_file(local_dir / rel, dst)
                files[rel] = {"sha256": digest, "size": size}
            final_manifest = _finalise(manifest, key, files)
            _write_text_durable(tmp / MANIFEST_NAME, final_manifest.to_json())
            _install_dir(tmp, self.root / key, self.root / ".trash")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _ref(self.uri(key), final_manifest)

    def read_manifest(self, uri_or_key: str) -> Manifest:
        path = self._path(uri_or_key)
        try:
            return Manifest.from_json((path / MANIFEST_NAME).read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise StorageError(
                f"no committed artifact at {path.as_uri()} (no {MANIFEST_NAME}: never written, or its writer died)"
            ) from None
        except ValueError as exc:
            raise StorageError(f"unreadable manifest at {path.as_uri()}: {exc}") from None

    def get_artifact(self, uri_or_key: str, dest: Path | None = None) -> Path:
        path = self._path(uri_or_key)
        manifest = self.read_manifest(uri_or_key)
        where = f"artifact {manifest.key or path.as_uri()} in {self.url}"
        stamp = tuple((rel, _stat_or_none(path / rel)) for rel in sorted(manifest.files))
        if self._verified.get(path) != stamp:  # re-hash only what changed since this process last verified it
            for rel, meta in manifest.files.items():
                _verify_file(path / rel, meta, where=where, rel=rel)
            self._verified[path] = stamp
        if dest is None:
            return path
        dest = Path(dest).absolute()
        tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex}"
        try:
            shutil.copytree(path, tmp)
            _install_dir(tmp, dest, dest.parent / f".{dest.name}.trash")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    def list_artifacts(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.strip("/") if prefix.strip("/") else self.root
        scan_root, name_prefix = (base, "") if base.is_dir() else (base.parent, base.name)
        found = []
        for dirpath, dirnames, filenames in os.walk(scan_root):
            here = Path(dirpath)
            if here == self.root:
                dirnames[:] = [d for d in dirnames if d not in _INTERNAL_DIRS]
            if here == scan_root and name_prefix:
                dirnames[:] = [d for d in dirnames if d.startswith(name_prefix)]
            if MANIFEST_NAME in filenames and here != self.root:
                found.append(here.relative_to(self.root).as_posix())
                dirnames[:] = []
        return sorted(found)

    def cleanup_tmp(self, older_than_s: float = 3600.0) -> int:
        """Delete half-written folders left by killed writers (never visible under a final key); returns how many.

        Only folders untouched for `older_than_s` go, so a writer still at work in another process keeps its own.
        """
        n = 0
        cutoff = time.time() - older_than_s
        for d in _INTERNAL_DIRS:
            for child in (self.root / d).glob("*") if (self.root / d).is_dir() else []:
                if child.stat().st_mtime <= cutoff:
                    shutil.rmtree(child, ignore_errors=True)
                    n += 1
        return n


# ----------------------------------------------------------------------------------------------------------- S3 store


_CREDENTIAL_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
    "Forbidden",
}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}


def _client_error_code(exc: BaseException) -> tuple[str | None, str]:
    """(error code, message) of the botocore ClientError behind `exc` (boto3 wraps some in S3UploadFailedError)."""
    from botocore.exceptions import ClientError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError):
            err = seen.response.get("Error", {})
            return str(err.get("Code")), str(err.get("Message") or seen)
        seen = seen.__cause__ or seen.__context__
    m = re.search(r"An error occurred \((\w+)\)", str(exc))
    return (m.group(1) if m else None), str(exc)


_LOADER: Any = None
_LOADER_LOCK = threading.Lock()


def _botocore_session() -> Any:
    """A fresh botocore session (credentials resolved anew from the environment) sharing one loaded service model.

    Loading the S3 model costs ~0.3 s per session; sharing the loader makes opening a store ~5x cheaper.
    """
    import botocore.session

    global _LOADER
    session = botocore.session.Session()
    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _LOADER)
    return session


class S3Store:
    """Artifacts as objects under `s3://bucket/prefix/<key>/` on AWS S3 or any S3-compatible endpoint.

    Credentials come from the standard boto3 chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE / instance
    roles); nothing here stores them. Large files go up as multipart uploads (`TransferConfig`); a multipart object
    only appears under its key once complete. The manifest is put last, so a killed writer leaves an invisible
    artifact; incomplete multipart uploads it leaves can be aborted with `abort_incomplete_uploads` (or a bucket
    lifecycle rule).
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        cache_dir: Path | None = None,
        transfer_config: TransferConfig | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunksize: int = 16 * 1024 * 1024,
        client: Any = None,
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.endpoint_url = endpoint_url
        self.region = region
        self.cache_dir = Path(cache_dir) if cache_dir is not None else get_settings().cache_dir
        self._transfer_config = transfer_config
        self._threshold = multipart_threshold
        self._chunksize = multipart_chunksize
        self._client = client
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint})"

    @property
    def endpoint(self) -> str:
        return (
            self.endpoint_url or f"AWS S3 ({self.region or os.environ.get('AWS_DEFAULT_REGION') or 'default region'})"
        )

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            extra: dict[str, Any] = {}
            if self.endpoint_url:
                # S3-compatible servers (MinIO, Ceph, moto) want path-style addressing, and older ones reject the
                # CRC checksum headers newer botocore sends by default; our own sha256 checks cover integrity.
                extra = {
                    "s3": {"addressing_style": "path"},
                    "request_checksum_calculation": "when_required",
                    "response_checksum_validation": "when_required",
                }
            config = Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=16,
                **extra,
            )
            self._client = boto3.session.Session(botocore_session=_botocore_session()).client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config
            )
        return self._client

    @property
    def transfer_config(self) -> TransferConfig:
        if self._transfer_config is None:
            from boto3.s3.transfer import TransferConfig

            self._transfer_config = TransferConfig(
                multipart_threshold=self._threshold, multipart_chunksize=self._chunksize, max_concurrency=4
            )
        return self._transfer_config

    # -- naming

    def _full(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def _locate(self, uri_or_key: str) -> tuple[str, str]:
        """(bucket, object prefix of the artifact) for a key of this store or any s3:// URI."""
        if uri_or_key.startswith("s3://"):
            parsed = urlparse(uri_or_key)
            return parsed.netloc, parsed.path.strip("/")
        if "://" in uri_or_key:
            raise StorageError(f"{self!r} cannot read {uri_or_key!r}: not an s3:// URI or a key")
        return self.bucket, self._full(uri_or_key)

    # -- errors

    @contextlib.contextmanager
    def _errors(self, action: str, bucket: str, key: str = "") -> Iterator[None]:
        """Turn botocore failures into a StorageError that says which endpoint, bucket and key, and what to do."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        try:
            yield
        except StorageError:
            raise
        except Exception as exc:
            boto = isinstance(exc, ClientError | BotoCoreError | Boto3Error) or type(exc).__module__.startswith(
                "s3transfer"
            )
            if not boto:
                raise
            where = f"S3 {action} of s3://{bucket}/{key} at endpoint {self.endpoint} failed"
            if isinstance(exc, NoCredentialsError | PartialCredentialsError):
                raise StorageError(
                    f"{where}: no usable credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "(or AWS_PROFILE)"
                ) from None
            code, message = _client_error_code(exc)
            if code in _MISSING_BUCKET_CODES or (action == "bucket check" and code in ("404", "NotFound")):
                hint = f"bucket {bucket!r} does not exist at {self.endpoint}: create it or fix RSTAR_ARTIFACT_URL"
            elif code in _CREDENTIAL_CODES:
                hint = (
                    f"access to bucket {bucket!r} was refused ({code}): check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY / AWS_PROFILE and the bucket policy"
                )
            elif code is None:
                hint = f"{type(exc).__name__}: {message} (is RSTAR_S3_ENDPOINT_URL right and the server up?)"
            else:
                hint = f"{code}: {message}"
            raise StorageError(f"{where}: {hint}") from None

    def _check_bucket(self) -> None:
        """One HEAD on the bucket before the first write, so a wrong bucket or key fails before minutes of upload."""
        if not self._bucket_checked:
            with self._errors("bucket check", self.bucket):
                self.client.head_bucket(Bucket=self.bucket)
            self._bucket_checked = True

    @staticmethod
    def _is_missing(exc: BaseException) -> bool:
        code, _ = _client_error_code(exc)
        return code in ("404", "NoSuchKey", "NotFound")

    # -- the interface

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        bucket, obj = self._locate(key)
        if bucket == self.bucket:  # a missing bucket or refused credentials must fail loudly, not read as "absent"
            self._check_bucket()
        with self._errors("exists", bucket, f"{obj}/{MANIFEST_NAME}"):
            try:
                self.client.head_object(Bucket=bucket, Key=f"{obj}/{MANIFEST_NAME}")
            except ClientError as exc:
                if self._is_missing(exc):
                    return False
                raise
        return True

    def _list_keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        with self._errors("list", bucket, prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def put_artifact(self, key: str, local_dir: Path, manifest: Manifest) -> ArtifactRef:
        key = _check_key(key)
        local_dir = Path(local_dir)
        self._check_bucket()
        obj = self._full(key)
        files: dict[str, dict[str, Any]] = {}
        for rel in _list_files(local_dir):
            digest, size = sha256_file(local_dir / rel)
            files[rel] = {"sha256": digest, "size": size}
        final_manifest = _finalise(manifest, key, files)
        manifest_key = f"{obj}/{MANIFEST_NAME}"
        with self._errors("put", self.bucket, obj):
            # Re-writing a key: withdraw the old manifest first so no reader sees old manifest + new files, then drop
            # objects the new version does not have.
            stale = [k for k in self._list_keys(self.bucket, obj + "/") if k[len(obj) + 1 :] not in files]
            if manifest_key in stale:
                self.client.delete_object(Bucket=self.bucket, Key=manifest_key)
                stale.remove(manifest_key)
            for i in range(0, len(stale), 1000):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in stale[i : i + 1000]], "Quiet": True}
                )
            for rel, meta in files.items():
                self.client.upload_file(
                    str(local_dir / rel),
                    self.bucket,
                    f"{obj}/{rel}",
                    ExtraArgs={"Metadata": {"sha256": meta["sha256"]}},
                    Config=self.transfer_config,
                )
            body = final_manifest.to_json().encode("utf-8")
            self.client.put_object(
                Bucket=self.bucket, Key=manifest_key, Body=body, ContentType="application/json"
            )  # last: the commit
        return _ref(self.uri(key), final_manifest)

    def read_manifest(self, uri_or_key: str) -> Manifest:
        bucket, obj = self._locate(uri_or_key)
        from botocore.exceptions import ClientError

        with self._errors("read manifest", bucket, obj):
            try:
                body = self.client.get_object(Bucket=bucket, Key=f"{obj}/{MANIFEST_NAME}")["Body"].read()
            except ClientError as exc:
                if self._is_missing(exc):
                    raise StorageError(
                        f"no committed artifact at s3://{bucket}/{obj} (endpoint {self.endpoint}): no {MANIFEST_NAME} "
                        "(never written, or its writer died before committing)"
                    ) from None
                raise
        try:
            return Manifest.from_json(body)
        except ValueError as exc:
            raise StorageError(f"unreadable manifest at s3://{bucket}/{obj}: {exc}") from None

    def get_artifact(self, uri_or_key: str, dest: Path | None = None) -> Path:
        bucket, obj = self._locate(uri_or_key)
        manifest = self.read_manifest(uri_or_key)
        target = Path(dest).absolute() if dest is not None else self.cache_dir / manifest.digest
        if dest is None and _cached_manifest_matches(target, manifest):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            for rel, meta in manifest.files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                with self._errors("download", bucket, f"{obj}/{rel}"):
                    self.client.download_file(bucket, f"{obj}/{rel}", str(path), Config=self.transfer_config)
                _verify_file(path, meta, where=f"artifact s3://{bucket}/{obj} at {self.endpoint}", rel=rel)
            _write_text_durable(tmp / MANIFEST_NAME, manifest.to_json())  # last: marks the cached copy complete
            if dest is None and _cached_manifest_matches(target, manifest):
                return target  # another process installed the same copy meanwhile; keep theirs (it may be in use)
            _install_dir(tmp, target, target.parent / ".trash")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def list_artifacts(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix.lstrip('/')}" if self.prefix else prefix.lstrip("/")
        base = f"{self.prefix}/" if self.prefix else ""
        suffix = "/" + MANIFEST_NAME
        keys = sorted(k[len(base) : -len(suffix)] for k in self._list_keys(self.bucket, full) if k.endswith(suffix))
        # A file that happens to be called manifest.json inside an artifact does not make a second artifact.
        found = set(keys)
        return [k for k in keys if not any("/".join(k.split("/")[:i]) in found for i in range(1, k.count("/") + 1))]

    def abort_incomplete_uploads(self, prefix: str = "") -> int:
        """Abort multipart uploads left by killed writers under `prefix` (they are invisible but hold storage)."""
        full = f"{self.prefix}/{prefix.lstrip('/')}" if self.prefix else prefix.lstrip("/")
        n = 0
        with self._errors("abort uploads", self.bucket, full):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full):
                for up in page.get("Uploads", []):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    n += 1
        return n


# ------------------------------------------------------------------------------------------------------- construction


def open_store(settings: Settings | None = None) -> ArtifactStore:
    """The artifact store the settings point at (`RSTAR_ARTIFACT_URL`): local folder or S3 bucket/prefix."""
    settings = settings or get_settings()
    return _store_for(settings.artifact_url, settings)


def store_for_uri(uri: str, settings: Settings | None = None) -> ArtifactStore:
    """A store able to read `uri` (file:// or s3://), e.g. a parent artifact recorded by another run's settings."""
    settings = settings or get_settings()
    if uri.startswith("s3://"):
        bucket = urlparse(uri).netloc
        if settings.artifact_url.startswith(f"s3://{bucket}"):
            return _store_for(settings.artifact_url, settings)
        return _store_for(f"s3://{bucket}", settings)
    if uri.startswith("file://"):
        return _store_for(
            settings.artifact_url if settings.artifact_url.startswith("file://") else "file:///", settings
        )
    raise StorageError(f"no artifact store reads {uri!r} (file:// and s3:// URIs only)")


def _store_for(url: str, settings: Settings) -> ArtifactStore:
    if url.startswith("s3://"):
        return S3Store(
            url,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            cache_dir=settings.cache_dir,
            multipart_threshold=settings.s3_multipart_threshold,
            multipart_chunksize=settings.s3_multipart_chunksize,
        )
    return LocalStore(url, cache_dir=settings.cache_dir)
