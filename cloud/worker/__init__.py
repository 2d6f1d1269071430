"""The cloud worker (`python -m cloud.worker`): background jobs over the cloud's database.

Each tick returns expired review leases to the queue, requeues training and export jobs whose lease
expired, queues retraining where enough new labels arrived, and builds waiting dataset exports. Every
step is a conditional UPDATE, an insert guarded by a unique index, or a claim with SKIP LOCKED, so any
number of replicas can run side by side.
"""
