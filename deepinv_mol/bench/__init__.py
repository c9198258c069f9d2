r"""Benchmarks: library functions that measure side by side in one run and return rows (dicts).

They back ``deepinv-mol bench ...``; nothing in the library imports this package. Their problems come from
the task registry (:func:`deepinv_mol.tasks.get_task`, with ``size=`` for small variants) except where a
benchmark compares an operator with deepinv's own at a matched geometry (:mod:`deepinv_mol.bench.ct`) or
uses a problem that has no task (deblurring in :mod:`deepinv_mol.bench.luser`).
"""

__all__: list[str] = []
