"""The head pipeline (ns-eval protocol, one-frame export state) and test-time code fitting."""
