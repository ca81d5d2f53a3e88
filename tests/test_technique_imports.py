"""Techniques do not import one another: pruning, quantization and
distillation meet only through the shared helpers (`keras_compress._models`,
`keras_compress._wrappers`)."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_compress"
TECHNIQUES = ("pruning", "quantization", "distillation", "factorization", "clustering")


def imported_modules(source, module):
    """Every module an import statement of `source` names (anywhere in the
    file, functions included), relative imports resolved against `module`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            found.add(name)
            found.update(f"{name}.{alias.name}" for alias in node.names)
    return found


def technique_of(module):
    parts = module.split(".")
    if len(parts) > 1 and parts[0] == "keras_compress" and parts[1] in TECHNIQUES:
        return parts[1]
    return None


def cross_imports(root=PACKAGE):
    """`[(file, imported module)]` for every import of one technique by another."""
    found = []
    for technique in TECHNIQUES:
        for path in sorted((root / technique).rglob("*.py")):
            relative = path.relative_to(root.parent).with_suffix("")
            module = ".".join(relative.parts)
            if path.name == "__init__.py":
                module = module.removesuffix(".__init__") + ".__init__"
            for name in imported_modules(path.read_text(), module):
                other = technique_of(name)
                if other is not None and other != technique:
                    found.append((str(path.relative_to(root.parent)), name))
    return found


def test_the_parser_sees_every_form_of_import():
    source = (
        "import keras_compress.pruning\n"
        "from keras_compress.distillation import Distiller\n"
        "def f():\n"
        "    from ..pruning.prune import strip_pruning\n"
        "from keras_compress import pruning\n"
    )
    found = imported_modules(source, "keras_compress.quantization.quantize")
    assert {technique_of(name) for name in found} >= {"pruning", "distillation"}
    assert "keras_compress.pruning.prune" in found
    assert "keras_compress.pruning" in found


def test_a_cross_import_is_reported(tmp_path):
    for technique in TECHNIQUES:
        (tmp_path / "keras_compress" / technique).mkdir(parents=True)
    (tmp_path / "keras_compress" / "quantization" / "q.py").write_text(
        "from keras_compress._models import clone_model\n"
        "from keras_compress.quantization import rules\n"
        "from keras_compress import pruning\n"
    )
    assert cross_imports(tmp_path / "keras_compress") == [
        ("keras_compress/quantization/q.py", "keras_compress.pruning")
    ]


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_no_technique_imports_another(technique):
    assert (PACKAGE / technique).is_dir()
    offending = [(path, name) for path, name in cross_imports() if f"/{technique}/" in f"/{path}"]
    assert offending == [], (
        f"{technique} imports another technique; meet through a hook in "
        f"keras_compress/_models.py instead: {offending}"
    )
