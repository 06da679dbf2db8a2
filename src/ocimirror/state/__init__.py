"""The state database that sync passes, the daemon and the jobs API share (`db`, `migrations`).

A module of its own, below the faces: `sync/` records runs in it and `service/` keeps its
jobs there, and neither face imports the other to reach it.
"""
