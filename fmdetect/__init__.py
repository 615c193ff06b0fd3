"""fmdetect: the frequency-masking deepfake-image detector, from training to serving.

Every package of the project is imported under this one name (``fmdetect.core``, ``fmdetect.client``,
``fmdetect.training``, ...), so that installing it cannot shadow a user's own ``core`` or ``client``. In a source
checkout the packages are the top-level folders beside this one (the layout of ``DESIGN.md``); this package then
reaches them through its ``__path__``. In an installed wheel they are ordinary subfolders of ``fmdetect/``.
"""

from pathlib import Path

__version__ = "0.1.0"

_here = Path(__file__).resolve().parent
if not (_here / "core").is_dir() and (_here.parent / "core" / "__init__.py").is_file():
    __path__.append(str(_here.parent))  # a source checkout: core/, training/, ... sit beside fmdetect/
