"""The ``robustx`` command line, one module per subcommand: :mod:`~robustx.commands.evaluate`,
:mod:`~robustx.commands.demo`, :mod:`~robustx.commands.compare`, :mod:`~robustx.commands.metrics`,
:mod:`~robustx.commands.clever` (the CLEVER table), :mod:`~robustx.commands.landscape`;
:mod:`~robustx.commands.common` holds what they share and :mod:`~robustx.commands.main` the
parser and :func:`main`, the ``robustx`` console script and ``python -m robustx``. Only the
commands load named models and data, through :mod:`robustx.pipeline.sources`; the method
modules take tensors and models."""
from robustx.commands.main import build_parser, main

__all__ = ["main", "build_parser"]
