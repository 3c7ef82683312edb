"""Memory passes: ``plan-memory`` (liveness, memory-aware scheduling, arena planning, streams)."""
