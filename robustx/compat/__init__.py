"""Drop-in compatibility layers for other robustness toolkits (``robustx.compat.art``)."""
