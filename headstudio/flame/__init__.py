"""FLAME-format head model: safe file loading, batched LBS, landmarks, procedural model."""

from headstudio.flame.files import FlameArrays, LandmarkEmbedding, load_flame_arrays, load_landmark_embedding, load_region_masks
from headstudio.flame.lbs import axis_angle_to_matrix, lbs, rigid_transforms, skin_points
from headstudio.flame.model import FlameModel, FlameOutput
from headstudio.flame.safe_pickle import FlameFileError, UnsafePickleError, safe_load_npy_dict, safe_load_pickle

__all__ = [
    "FlameArrays", "FlameFileError", "FlameModel", "FlameOutput", "LandmarkEmbedding", "UnsafePickleError",
    "axis_angle_to_matrix", "lbs", "load_flame_arrays", "load_landmark_embedding", "load_region_masks",
    "rigid_transforms", "safe_load_npy_dict", "safe_load_pickle", "skin_points",
]  # fmt: skip
