"""A durable turn store on SQLAlchemy 2's async ORM; `adapter` is what turnproof loads."""

from .adapter import OrmAdapter, adapter

__all__ = ["OrmAdapter", "adapter"]
