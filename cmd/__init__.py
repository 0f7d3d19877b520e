"""The `cmd` package holds the project's entry points (`python -m cmd.tinywasm`).

Run from the repository root, this package shadows the standard library's
`cmd` module, which `pdb` (and so `pytest --pdb`) imports for its `Cmd` class.
To keep them working, load the standard module by path and re-export its names.
"""

import importlib.util as _util
import os as _os
import sysconfig as _sysconfig

_path = _os.path.join(_sysconfig.get_paths()["stdlib"], "cmd.py")
_spec = _util.spec_from_file_location("_stdlib_cmd", _path)
if _spec is not None and _spec.loader is not None:
    _stdlib_cmd = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_stdlib_cmd)
    globals().update({k: v for k, v in vars(_stdlib_cmd).items() if not k.startswith("__")})
    __all__ = list(getattr(_stdlib_cmd, "__all__", ["Cmd"]))
