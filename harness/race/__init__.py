"""The race engine: actors, schedules, blocking detection, histories and transcripts.

Races are made to happen, not hoped for: every actor reaches PostgreSQL
through its own gated proxy listener, and the engine lets exactly one step
through at a time, in the order a schedule names.
"""
