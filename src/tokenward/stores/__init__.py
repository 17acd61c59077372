"""Storage back ends: Redis connections and the embedded Redis-compatible server."""
