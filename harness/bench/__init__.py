"""Benchmarks: figures printed by `turnproof bench NAME`, never tests.

- `race`: interleavings per second of the race engine, and the naive test's hit rate;
- `driver`: the added cost of an operation through a driver process;
- `proxy`: the proxy's added round trip and throughput without toxics;
- `writer`: database writes of the streaming writer with and without debounce;
- `suite`: the cold suite serial, with `-n 2`, and as two shards merged.
"""
