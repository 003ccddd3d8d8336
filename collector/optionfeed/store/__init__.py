"""The database side: schema, migrations, partitions and the batch writer.

Modules, from the shape of the data to the running writer:

- ``tables``: every table's columns in row order, natural key and merge SQL;
- ``migrations``: ``schema/`` applied under an advisory lock; ``partitions``: daily partitions;
  ``timescale``: hypertables when TimescaleDB is there;
- ``connection``: connecting, error translation, staging tables; ``embedded``: the pgserver
  PostgreSQL used when no URL is given;
- ``sink``: the ``BatchSink`` seam and the PostgreSQL sink (COPY into staging, then merge);
- ``writer``: the bounded buffer, flushes by size and age, retries, and shutdown;
- ``records``: rows the collector makes itself (rejected frames, gaps, heartbeats);
- ``command``: ``optionfeed migrate``.

Nothing here knows Deribit's message shapes: ``optionfeed.collector.normalize`` turns them into
rows of these tables.
"""
