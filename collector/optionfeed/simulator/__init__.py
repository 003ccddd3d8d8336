"""A Deribit-compatible exchange simulator: the stand-in for Deribit in tests, demos, benchmarks.

Layers, bottom up: pure pieces (:mod:`.pricing`, :mod:`.calendar`, :mod:`.underlyings`,
:mod:`.book`, :mod:`.option`, :mod:`.quoting`, :mod:`.ticker`, :mod:`.market`, :mod:`.ledger`,
:mod:`.faults`, :mod:`.frames`, :mod:`.params`), the fan-out (:mod:`.publisher`,
:mod:`.session`), the data sources (:mod:`.source`, :mod:`.replay`), the methods (:mod:`.api`),
the server (:mod:`.server`) and the command (:mod:`.command`). README.md in this folder is the
user's guide.
"""
