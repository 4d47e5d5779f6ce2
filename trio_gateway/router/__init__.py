"""Which engine serves a request: policies, circuit breakers, admission with a bounded queue."""
