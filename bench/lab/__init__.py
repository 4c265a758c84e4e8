"""Lab networks in namespaces, shared by tests, benches and the demo."""
