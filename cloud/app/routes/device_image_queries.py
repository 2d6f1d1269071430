"""(to be written)"""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/device-api/v1/image-queries", tags=["device"])
