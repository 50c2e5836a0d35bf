"""The command lines' shared code: the top-level scripts (``train*.py``, ``eval*.py``,
``sample_t2i_discrete.py``) are thin wrappers over it.

================  ==========================================================================
``entry``         flags, config resolution, ``train_main``, ``eval_main``, ``run``
``config_check``  the whole-config check before any work (gathers every error)
================  ==========================================================================
"""
