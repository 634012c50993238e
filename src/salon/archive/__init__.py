"""Archiving: individual and composed recordings of a session's streams (OpenTok's archive API)."""
