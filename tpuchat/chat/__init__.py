"""Conversations: history, context budget, sessions (conversation + engine)."""
