"""The training service: a process (and container) that leases training jobs from the cloud and turns
each into a registered model version.

    python -m training.service

Settings (environment, `TrainerSettings`):

    TRAINER_CLOUD_URL         the cloud API (default http://127.0.0.1:8000)
    TRAINER_API_TOKEN         a trainer-role token; or TRAINER_API_TOKEN_FILE, read again when needed
    TRAINER_OWNER             the name leases are held under (default trainer-<host>-<pid>)
    TRAINER_LEASE_S           lease length (default 120); TRAINER_HEARTBEAT_S renewal (default lease/4)
    TRAINER_POLL_S            seconds between lease attempts while the queue is empty (default 5)
    TRAINER_WORK_DIR          scratch space per job, removed after it (default .intellioptics/trainer)
    TRAINER_DEVICE            auto (CUDA when present), cpu or cuda; TRAINER_THREADS: CPU threads.
                              Both are defaults: a job's own config wins.
    TRAINER_EXPORT_TIMEOUT_S  how long to wait for the worker to build the dataset export (1800)

Credentials: a trainer leases jobs, queues dataset exports, stores embeddings and registers and
promotes model versions, which the cloud allows the `trainer` role (and admins) only, so it uses the
token of a trainer-role service account, which can do nothing else. The cloud's first start creates
one, `trainer`, when CLOUD_TRAINER_TOKEN_FILE is set, and writes its token to that file (compose and
`make run` share it with the trainer); otherwise an administrator creates a user with the trainer role
and a token for it through /api/v1/admin. Before leasing, the trainer checks the role the cloud
reports for its token (`GET /device-api/v1/me`), so a mis-configured trainer never takes jobs it
cannot finish.

The loop is in `loop`, one job in `job`, heartbeats and progress in `reporter`, the HTTP calls in
`client`.
"""
