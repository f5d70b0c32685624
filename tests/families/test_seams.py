"""Nothing outside the family adapters and the registry branches on a family's name, whether by ==, in, or a
mapping keyed on it: what differs between families is asked of their adapter."""

import ast
from pathlib import Path

import scalelab
from scalelab.models.registry import FAMILIES

PACKAGE = Path(scalelab.__file__).parent
# The adapters, the registry naming them, and each model module, which names its own family in its messages.
ALLOWED = {"families", "models/registry.py", "models/ngram.py", "models/lstm.py", "models/transformer.py"}


def _names(node: ast.AST) -> list[str]:
    return [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and c.value in FAMILIES]


def branches_on_a_family_name(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            found += [f"line {node.lineno}: compares with {name!r}" for operand in operands
                      if isinstance(operand, (ast.Constant, ast.Tuple, ast.List, ast.Set)) for name in _names(operand)]
        elif isinstance(node, ast.Dict):
            found += [f"line {node.lineno}: a mapping keyed on {key.value!r}" for key in node.keys
                      if isinstance(key, ast.Constant) and key.value in FAMILIES]
    return found


def test_no_module_outside_the_adapters_branches_on_a_family_name():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.split("/")[0] in ALLOWED or relative in ALLOWED:
            continue
        if found := branches_on_a_family_name(path.read_text(encoding="utf-8")):
            offenders[relative] = found
    assert offenders == {}


def test_the_check_sees_each_kind_of_branch():
    assert len(branches_on_a_family_name('if family == "ngram": pass')) == 1
    assert len(branches_on_a_family_name('x = family in ("lstm", "transformer")')) == 2
    assert len(branches_on_a_family_name('TAGS = {"ngram": ["arpa"]}')) == 1
    assert branches_on_a_family_name('family = "transformer"\nprint(family)') == []
