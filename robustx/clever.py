"""CLEVER scores (Weng et al., ICLR 2018). Being written (issue 3)."""


def clever(*args, **kwargs):
    raise NotImplementedError("robustx.clever is being implemented")
