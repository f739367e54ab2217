"""hs-track: from a person's own video to a FLAME-tracked subject in the IMavatar layout."""
