"""Blob storage for images, bundles and exports: local filesystem (default) or Azure Blob."""

from __future__ import annotations

from cloud.app.blobstore.base import BlobNotFoundError, BlobStore, validate_key
from cloud.app.blobstore.local import LocalBlobStore
from cloud.app.settings import CloudSettings

__all__ = ["BlobNotFoundError", "BlobStore", "LocalBlobStore", "make_blob_store", "validate_key"]


def make_blob_store(settings: CloudSettings) -> BlobStore:
    if settings.blob_backend == "azure":
        from cloud.app.blobstore.azure import AzureBlobStore

        return AzureBlobStore(settings.azure_connection_string, settings.azure_container)
    return LocalBlobStore(settings.blob_root)
