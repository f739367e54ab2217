"""Training-engine parts: learning-rate schedules whose state loads with weights_only."""
