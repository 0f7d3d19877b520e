"""``tinywasm new``: a module folder from the language's template, ready to build and load.

Templates are folders in ``templates/<language>/``. Every file is copied; ``__NAME__``
(in names and text) becomes the module's name, ``__LEN__`` its length in bytes,
``__LANGUAGE__`` the language and ``__TOOLCHAIN__`` a line saying how to install it.
"""

from __future__ import annotations

from pathlib import Path

from tinywasm_wasi.build.compile import BuildError, toolchain_for
from tinywasm_wasi.policy.manifest import Language
from tinywasm_wasi.policy.names import ModuleNameError, check_module_name

__all__ = ["TEMPLATES_DIR", "languages_with_templates", "scaffold"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def languages_with_templates() -> list[Language]:
    """The languages `scaffold` has a template for."""
    return [lang for lang in Language if (TEMPLATES_DIR / lang.value).is_dir()]


def scaffold(name: str, language: Language, parent: Path) -> Path:
    """Create ``<parent>/<name>/`` from the template of `language`; return the folder.

    Raises:
        BuildError: the name is not a valid module name, the folder exists and is not
            empty, or there is no template for the language.
    """
    try:
        check_module_name(name)
    except ModuleNameError as exc:
        raise BuildError(str(exc)) from None
    template = TEMPLATES_DIR / language.value
    if not template.is_dir():
        have = ", ".join(lang.value for lang in languages_with_templates())
        raise BuildError(f"there is no template for {language} yet (there is for: {have})")
    folder = parent / name
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise BuildError(f"{folder} already exists and is not empty: choose another name")
    chain = toolchain_for(language)
    values = {
        "__NAME__": name,
        "__LEN__": str(len(name.encode())),
        "__LANGUAGE__": language.value,
        "__TOOLCHAIN__": f"Its toolchain: {chain.install_hint}",
    }
    files = sorted(p for p in template.rglob("*") if p.is_file() and p.suffix != ".pyc")
    folder.mkdir(parents=True, exist_ok=True)
    for source in files:
        relative = str(source.relative_to(template)).replace("__NAME__", name)
        text = source.read_text(encoding="utf-8")
        for token, value in values.items():
            text = text.replace(token, value)
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return folder
