"""Running workflows on a Ray cluster: resident EngineWorker actors (one per GPU, or N on CPU), a pool that
places each run on the worker that already holds its models, and ClusterEngine, which gives the CLI and the
server the Engine's interface over that pool. Importing this package does not import Ray; creating a pool does.

    worker.py   the actor: one Engine, a private output directory, events streamed to the driver
    pool.py     placement by affinity, requeue on a dead worker, interrupts, membership, stats
    engine.py   ClusterEngine: prepare/validate on the driver, run on the pool, land the files locally
"""
