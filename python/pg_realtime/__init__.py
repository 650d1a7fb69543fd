"""pg-realtime: Supabase Realtime Broadcast for any PostgreSQL."""

__version__ = "0.1.0"
