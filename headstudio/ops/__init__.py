"""Pure tensor operations shared by the engine: nearest vertices, batched root finding, mesh helpers."""
