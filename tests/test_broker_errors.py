"""broker/errors.py is the one home of Kafka's error codes in the broker."""
from __future__ import annotations

import ast
from pathlib import Path

from kio.schema.errors import ErrorCode as KioErrorCode

import broker.errors
from broker.errors import ErrorCode

BROKER = Path(broker.errors.__file__).parent


def test_every_error_code_has_kafkas_name_and_number():
    # kio generates its table from Kafka's own, so a typo in a name or a number shows up here
    for code in ErrorCode:
        assert KioErrorCode[code.name.lower()].value == code.value, code.name


def test_every_bare_name_in_broker_errors_is_the_enum_member_of_that_name():
    bare = {name: value for name, value in vars(broker.errors).items() if name.isupper()}
    assert set(bare) == set(ErrorCode.__members__)
    for name, value in bare.items():
        assert value is ErrorCode[name], name


def _numbers(node: ast.expr) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) is int


def test_no_other_broker_module_numbers_an_error_code_itself():
    # a second `NOT_LEADER_OR_FOLLOWER = 6` (in a module or in a class such as an enum) is how
    # the eight copies that broker/errors.py replaced began
    offenders = []
    for path in sorted(BROKER.glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Assign) and _numbers(node.value)
                    and any(isinstance(t, ast.Name) and t.id in ErrorCode.__members__ for t in node.targets)):
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []
