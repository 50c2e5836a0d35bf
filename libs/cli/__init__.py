"""The command lines' shared code: the top-level scripts (``train*.py``, ``eval*.py``,
``sample_t2i_discrete.py``) are thin wrappers over it.

================  ==========================================================================
``flags``         the scripts' flags, their one-line errors, config resolution, ``run``
``train``         ``train_main``: the body of every ``train*.py``
``evaluate``      ``eval_main``: the body of every ``eval*.py``; weights for sampling, checked
                  against their checkpoint's config
``sample``        ``sample_main``: the body of ``sample_t2i_discrete.py``
``config_check``  the whole-config check before any work (gathers every error), the script
                  for a config's mode, the FID inputs
================  ==========================================================================
"""
