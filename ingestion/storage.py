"""Where uploaded video files wait for a worker: a shared local directory or an S3-compatible bucket.

The API process receives an upload into ``spool_path(job_id)`` (always on local disk: the file is
probed there before it is accepted), then :meth:`UploadStorage.commit` hands it to the store; the
worker that takes the job gets a local path from :meth:`UploadStorage.fetch` and deletes the
upload with :meth:`UploadStorage.delete` once the job has ended (success or final failure).

- :class:`LocalStorage`: ``DIR/incoming/<job>.part`` -> ``DIR/uploads/<job>`` by one ``rename`` (same
  file system, atomic). Every worker must see ``DIR``: one machine, or a ReadWriteMany volume.
- :class:`S3Storage`: the file goes to ``s3://BUCKET/PREFIX<job>`` with boto3's managed (multipart,
  threaded) transfer and comes back into ``DIR/work/`` on the worker's node. boto3 is an optional
  extra (``pip install 'trdetr-service[s3]'``; the Docker images have it).

All methods are blocking: callers run them in a worker thread.
"""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class UploadMissing(RuntimeError):
    """The job's upload is not in the store any more (deleted by hand, or the volume was replaced)."""


class UploadStorage(ABC):
    """An upload store; ``local_dir`` holds the spool (and, for remote stores, the workers' downloads)."""

    def __init__(self, local_dir: Path) -> None:
        self.local_dir = Path(local_dir)
        self.incoming = self.local_dir / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def spool_path(self, job_id: str) -> Path:
        """Where the API writes an upload while receiving and probing it."""
        return self.incoming / f"{job_id}.part"

    @abstractmethod
    def commit(self, job_id: str, spooled: Path) -> None:
        """Move a received upload into the store (the spooled file is gone afterwards)."""

    @abstractmethod
    def fetch(self, job_id: str) -> Path:
        """A local path of the upload for the worker; raises :class:`UploadMissing`."""

    @abstractmethod
    def release(self, job_id: str, path: Path) -> None:
        """The worker is done reading ``path`` (a remote store deletes its local copy)."""

    @abstractmethod
    def delete(self, job_id: str) -> None:
        """Remove the upload (idempotent): its job has ended."""

    @abstractmethod
    def exists(self, job_id: str) -> bool:
        """Whether the store still holds the upload of ``job_id``."""

    def sweep(self, older_than_s: float) -> int:
        """Delete spool files older than ``older_than_s`` (left by a process that died mid-upload)."""
        return _sweep(self.incoming, older_than_s)


def _sweep(directory: Path, older_than_s: float) -> int:
    cutoff = time.time() - older_than_s
    removed = 0
    for path in directory.glob("*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


class LocalStorage(UploadStorage):
    """Uploads as files in ``DIR/uploads`` (rename from the spool: no copy)."""

    def __init__(self, local_dir: Path) -> None:
        super().__init__(local_dir)
        self.uploads = self.local_dir / "uploads"
        self.uploads.mkdir(parents=True, exist_ok=True)

    def _path(self, job_id: str) -> Path:
        return self.uploads / job_id

    def commit(self, job_id: str, spooled: Path) -> None:
        os.replace(spooled, self._path(job_id))

    def fetch(self, job_id: str) -> Path:
        path = self._path(job_id)
        if not path.is_file():
            raise UploadMissing(f"the upload of job {job_id} is not in {self.uploads}")
        return path

    def release(self, job_id: str, path: Path) -> None:
        """Nothing to do: the worker read the stored file in place."""

    def delete(self, job_id: str) -> None:
        self._path(job_id).unlink(missing_ok=True)

    def exists(self, job_id: str) -> bool:
        return self._path(job_id).is_file()


class S3Storage(UploadStorage):
    """Uploads as objects ``PREFIX<job_id>`` in an S3-compatible bucket (boto3 managed transfers)."""

    def __init__(self, local_dir: Path, *, bucket: str, prefix: str = "", endpoint_url: str | None = None,
                 client: Any = None) -> None:
        super().__init__(local_dir)
        self.work = self.local_dir / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        self.prefix = prefix
        if client is None:
            try:
                import boto3  # optional extra: only S3 deployments need it
            except ImportError as exc:
                raise RuntimeError("TRDETR_INGEST_STORAGE=s3 needs boto3: pip install 'trdetr-service[s3]'") from exc
            client = boto3.client("s3", endpoint_url=endpoint_url)
        self.client = client

    def _key(self, job_id: str) -> str:
        return self.prefix + job_id

    def commit(self, job_id: str, spooled: Path) -> None:
        try:
            self.client.upload_file(str(spooled), self.bucket, self._key(job_id))
        finally:
            spooled.unlink(missing_ok=True)

    def fetch(self, job_id: str) -> Path:
        from botocore.exceptions import ClientError

        local = self.work / f"{job_id}.{os.getpid()}"
        try:
            self.client.download_file(self.bucket, self._key(job_id), str(local))
        except ClientError as exc:
            local.unlink(missing_ok=True)
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise UploadMissing(f"the upload of job {job_id} is not in s3://{self.bucket}/{self.prefix}") from exc
            raise
        except BaseException:
            local.unlink(missing_ok=True)
            raise
        return local

    def release(self, job_id: str, path: Path) -> None:
        path.unlink(missing_ok=True)

    def delete(self, job_id: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(job_id))

    def exists(self, job_id: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(job_id))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def sweep(self, older_than_s: float) -> int:
        return super().sweep(older_than_s) + _sweep(self.work, older_than_s)


def storage_from_settings(settings: Any) -> UploadStorage:
    """The store ``TRDETR_INGEST_STORAGE`` names (``settings``: :class:`service.settings.Settings`)."""
    if settings.ingest_storage == "s3":
        if not settings.ingest_s3_bucket:
            raise ValueError("TRDETR_INGEST_STORAGE=s3 needs TRDETR_INGEST_S3_BUCKET")
        return S3Storage(settings.ingest_dir, bucket=settings.ingest_s3_bucket, prefix=settings.ingest_s3_prefix,
                         endpoint_url=settings.ingest_s3_endpoint_url)
    return LocalStorage(settings.ingest_dir)
