"""Random-model fuzzer: ``generator.random_model(seed)`` and the zero-then-prune property it must pass."""
