"""Benchmarks: ``python -m bench.<name>``. Each prints one JSON object as its last stdout line and
writes a PNG plot under ``bench/out/``; comparisons are measured in the same run, never asserted
in tests. Does I/O (starts real servers on loopback, in throwaway directories)."""
