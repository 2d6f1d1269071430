"""`python -m cloud.worker`: settings from CLOUD_* (and DATABASE_URL); stops on SIGTERM or SIGINT."""

from __future__ import annotations

from cloud.worker.loop import main

if __name__ == "__main__":
    main()
