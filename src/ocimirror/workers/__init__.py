"""Scale out: copies run by `ocimirror worker` processes through a procrastinate queue.

With `execution: workers` (PostgreSQL state databases only) a sync pass plans as it does
in one process, then enqueues one procrastinate job per image copy (`queue.py`); any
number of `ocimirror worker` processes, on any machines, run each through the engine's
`copy_one` (`worker.py`) and record its result in the state database exactly as an
in-process pass does (`ledger.py`), the last one closing the pass. `schema.py` puts
procrastinate's schema and the ledger's tables beside the state database's own.
"""
