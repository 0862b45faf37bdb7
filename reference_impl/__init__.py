"""The reference implementation of the durable turn store: PostgreSQL through psycopg 3.

The harness loads it as `reference_impl:adapter` (or by the entry-point name
`reference`). It is the model other implementations copy: the schema lets the
database enforce the invariants (schema.py) and every operation is one SQL
statement decided by the database (store.py).
"""

from reference_impl.adapter import ReferenceAdapter

adapter = ReferenceAdapter()

__all__ = ["ReferenceAdapter", "adapter"]
