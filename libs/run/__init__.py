"""Run infrastructure: what every layer above may use; imports nothing else of ``libs``.

================  ==========================================================================
``errors``        ``UserError`` and the one-line error guard of the command lines
``atomic``        atomic file and folder writes, publishing a staged folder
``manifest``      checksummed file lists of a checkpoint
``checkpoint``    weights and checkpoints: read, convert, load, save, list, newest intact
``resume``        resuming: the saved optimizer state and step against this run's config
``safe_load``     data files without running code: restricted unpickler, ``.npy`` reads
``output_guard``  destinations that cannot hurt a run: not in a checkpoint or workdir
``weight_guard``  non-finite weight detection
``lock``          one run per folder (``RunLock``), launcher watch, writable folders
``log``           the run logger and ``stats.jsonl``
``config_io``     config JSON, diffs, flag overrides, default workdir
``seeds``         the named random streams and ``mix_seed``
``distributed``   collectives for shards of any size, the collective timeout, lost processes
================  ==========================================================================
"""
