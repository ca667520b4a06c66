"""State that outlives a batch: the online feature store, recovery and checkpoint tools."""
