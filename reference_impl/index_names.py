"""The names the schema gives its unique indexes: the store maps a violation of one to its
contract error by name, and the variants drop one by name. Apart from the schema (which
needs SQLAlchemy, only to install), so a store process does not import SQLAlchemy."""

ONE_ACTIVE_RUN_INDEX = "runs_one_active_per_chat"
"""The constraint name PostgreSQL reports when a second active run is refused."""
ONE_ROW_PER_TURN_INDEX = "messages_one_per_turn"
"""The unique index on (chat_id, turn_id, role) that makes persist idempotent."""
