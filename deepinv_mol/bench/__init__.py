r"""Benchmarks: library functions that measure side by side in one run and return rows (dicts).

They back ``deepinv-mol bench ...``; nothing in the library imports this package.
"""
