"""One nerfstudio Model per method, each assembled from the shared engine parts."""
