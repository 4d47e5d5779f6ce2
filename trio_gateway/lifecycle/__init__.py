"""A request's life in the gateway: its flight (cancel scope, engine task) and the ledger."""
