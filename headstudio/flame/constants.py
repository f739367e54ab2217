"""FLAME layout constants shared by the loader, the model and the procedural model."""

MODEL_FILENAME = "generic_model.pkl"
LANDMARK_FILENAME = "landmark_embedding.npy"
LANDMARK_WITH_EYES_FILENAME = "landmark_embedding_with_eyes.npy"
"""IMavatar's 70-point embedding (the 68 plus two iris points)."""
MASKS_FILENAME = "FLAME_masks.pkl"
MEDIAPIPE_EMBEDDING_FILENAME = "mediapipe_landmark_embedding.npz"
"""Where mediapipe's face-mesh points lie on the mesh (FLAME's file of that name; metrical-tracker reads it)."""

NUM_JOINTS = 5
"""global, neck, jaw, left eye, right eye"""
PARENTS = (-1, 0, 1, 1, 1)
NUM_LANDMARKS = 68
NUM_DYNAMIC_BINS = 79
"""Dynamic contour table rows: yaw 0..39 degrees, then -1..-39 degrees (DECA convention)."""
NUM_CONTOUR = 17

WORLD_SCALE = 4.0
"""headstudio world units per FLAME metre (IMavatar's convention): a head spans about one unit."""
