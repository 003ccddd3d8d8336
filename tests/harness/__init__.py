"""Test harness: real components (PostgreSQL, the simulator, a Kubernetes control plane) on
127.0.0.1, started and torn down by the tests themselves."""
