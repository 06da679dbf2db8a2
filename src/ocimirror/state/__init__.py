"""The state database that sync passes, the daemon and the jobs API share.

`db` (`StateDB`, runs and what they synced), `jobs` (the jobs table), `schema` (the tables),
`connection` (URL, engine, migration) and `migrations` (Alembic).

A module of its own, below the faces: `sync/` records runs in it and `service/` keeps its
jobs there, and neither face imports the other to reach it.
"""
