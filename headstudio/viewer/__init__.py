"""Driving the avatar in nerfstudio's viewer and in hs-render."""
