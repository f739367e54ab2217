"""MonoNPHM's neural parametric head prior: model, losses, training (``hs-prior``)."""
