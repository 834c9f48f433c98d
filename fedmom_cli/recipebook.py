"""`fedmom recipes list | show NAME | copy NAME DEST`: the recipes that ship inside the package.

Recipes are package data (`fedmom_cli/recipes/`, read through importlib.resources), so a wheel or
a site install has every one. `copy` writes a recipe as a starting point for your own (then
`fedmom train --recipe ./my.yaml`); as torchtune's `tune cp`, it never overwrites a file.

`flower_app` is a folder, not a recipe: the Flower App a deployment runs with `flwr run`
(docs/flower.md). `copy flower_app DIR` writes it as DIR (a new folder), or as DIR/flower_app when
DIR is an existing folder; `show` prints its pyproject.toml.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from fedmom_cli.errors import UserError


def root() -> Path:
    return Path(str(resources.files("fedmom_cli").joinpath("recipes")))


APPS = {"flower_app": ("pyproject.toml",)}  # folders that ship whole: name -> their files


def names() -> list[str]:
    base = root()
    return sorted([str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml")] + list(APPS))


def describe(name: str) -> str:
    """The first sentence of the recipe's opening comment (every shipped recipe opens with what it
    reproduces), whole however many lines it spans; the comment ends at a command line (`#   fedmom
    ...`) or the first line that is not a comment."""
    words: list[str] = []
    for line in _file(name).read_text().splitlines():
        if not line.startswith("#") or line.startswith("#  "):
            break
        words.extend(line[1:].split())
    text = " ".join(words)
    end = re.search(r"[.?!](?=\s|$)", text)
    return text[: end.end()] if end else text


def _file(name: str) -> Path:
    return root() / name / APPS[name][0] if name in APPS else root() / f"{name}.yaml"


def path(name: str) -> Path:
    """The recipe's file (an app's first file, its pyproject.toml)."""
    if name not in names():
        raise UserError(f"no shipped recipe {name!r} (known: {', '.join(names())})")
    return _file(name)


def copy(name: str, dest: Path) -> Path:
    from fedmom_cli import safety

    src = path(name)
    if name in APPS:
        return _copy_app(name, Path(dest))
    safety.check_names(Path(dest), "DEST")
    if str(dest).endswith("/") and not Path(dest).is_dir():
        raise UserError(f"folder {dest} does not exist")
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.is_symlink():  # a dangling link too: writing through it would write outside (issue 30)
        raise UserError(f"{dest} is a symbolic link; recipes copy never writes through one")
    if dest.exists():
        raise UserError(f"{dest} already exists; recipes copy never overwrites a file")
    if not dest.parent.is_dir():
        raise UserError(f"folder {dest.parent} does not exist")
    safety.check_out(dest, "file", "DEST")  # a read-only folder, a name too long: one line
    text = src.read_text()
    try:
        with open(dest, "x") as f:  # O_EXCL: never through a link, never over a file
            f.write(text)
    except BaseException:
        dest.unlink(missing_ok=True)  # a full disk leaves no half recipe
        raise
    return dest


def _copy_app(name: str, dest: Path) -> Path:
    """An app folder to DEST (new) or DEST/<name> (DEST an existing folder); nothing overwritten,
    and a failure midway removes the folder it made."""
    import shutil

    from fedmom_cli import safety

    safety.check_names(dest, "DEST")
    if dest.is_dir() and not dest.is_symlink():
        dest = dest / name
    if dest.is_symlink():
        raise UserError(f"{dest} is a symbolic link; recipes copy never writes through one")
    if dest.exists():
        raise UserError(f"{dest} already exists; recipes copy never overwrites")
    if not dest.parent.is_dir():
        raise UserError(f"folder {dest.parent} does not exist")
    safety.check_out(dest, "dir", "DEST")
    dest.mkdir()
    try:
        for file in APPS[name]:
            (dest / file).write_text((root() / name / file).read_text())
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dest
