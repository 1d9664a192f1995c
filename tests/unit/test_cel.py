"""CEL compilation and evaluation as policy rules and test cases use them (CONTRACT.md §6)."""

from __future__ import annotations

from typing import Any

import pytest

from app.policies.cel import (
    CelCompileError,
    CelEvalError,
    Program,
    compile_expression,
    evaluate,
    evaluate_condition,
)

ASSET: dict[str, Any] = {
    "id": "01J0000000000000000000000A",
    "asset_type": "model",
    "name": "acme/llm",
    "version": "1.2.0",
    "license": "MIT",
    "description": None,
    "tags": ["chat", "prod"],
    "annotations": {"endpoint": "http://127.0.0.1:8000"},
    "size_bytes": 1234,
    "provenance": None,
    "compliance": {"status": "unknown", "evaluated_at": None, "violations": []},
}
ARTIFACT = {
    "format": "safetensors",
    "dtypes": ["F16"],
    "tensor_count": 3,
    "parameter_count": 7_000_000_000,
    "findings": [],
}
ACTIVATION = {"asset": ASSET, "artifact": ARTIFACT}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('asset.license in ["MIT", "Apache-2.0"]', True),
        ('asset.license in ["Apache-2.0"]', False),
        ("asset.description == null", True),
        ("asset.size_bytes < 2000 && asset.size_bytes > 1000", True),
        ('"prod" in asset.tags', True),
        ('asset.tags.exists(t, t == "chat")', True),
        ("size(asset.tags)", 2),
        ("asset.compliance.violations", []),
        ('has(asset.annotations.endpoint) && asset.annotations.endpoint.startsWith("http")', True),
        ('artifact.format == "safetensors" && artifact.parameter_count <= 8000000000', True),
        ('artifact.dtypes.all(d, d in ["F16", "BF16"])', True),
        ("asset.size_bytes == 1234.0", True),  # CEL's numeric equality across int and double
        ("true == (1 == 1)", True),
        ("asset.name", "acme/llm"),
    ],
)
def test_evaluates_json_values(expression: str, expected: Any) -> None:
    result = evaluate(compile_expression(expression), ACTIVATION)
    assert result == expected
    assert type(result) is type(expected)


def test_response_variable_of_http_cases() -> None:
    response = {
        "status": 200,
        "json": {"choices": [{"message": {"content": "hello"}}]},
        "text": "x",
    }
    program = compile_expression(
        'response.status == 200 && response.json.choices[0].message.content.contains("hell")'
    )
    assert evaluate(program, {**ACTIVATION, "response": response}) is True
    assert evaluate(program, {**ACTIVATION, "response": {**response, "status": 500}}) is False


@pytest.mark.parametrize(
    ("expression", "where"),
    [
        ('asset.license in ["MIT", "Apache-2.0"', "line 1, column 38"),
        ("asset.size_bytes >", "line 1, column 19"),
        ("asset.license &&& true", "line 1, column 17"),
        ("asset.name ==\n  ", "line 2, column 3"),
        ("", "line 1, column 1"),
    ],
)
def test_compile_errors_name_the_position(expression: str, where: str) -> None:
    with pytest.raises(CelCompileError) as info:
        compile_expression(expression)
    assert f"syntax error at {where}" in info.value.message
    assert "\n" not in info.value.message
    assert str(info.value) == info.value.message


def test_deeply_nested_input_is_a_compile_error_not_a_crash() -> None:
    with pytest.raises(CelCompileError):
        compile_expression("(" * 3000 + "1" + ")" * 3000)


def test_programs_are_cached_by_text() -> None:
    compile_expression.cache_clear()
    first = compile_expression("asset.version != ''")
    again = compile_expression("asset.version != ''")
    other = compile_expression("asset.version == ''")
    assert isinstance(first, Program)
    assert again is first and other is not first
    info = compile_expression.cache_info()
    assert (info.hits, info.misses) == (1, 2)


@pytest.mark.parametrize(
    ("expression", "activation", "says"),
    [
        ("asset.missing == 1", ACTIVATION, "no such key: 'missing'"),
        ('asset["gone"]', ACTIVATION, "no such key: 'gone'"),
        ("asset.license + 1", ACTIVATION, "string + int"),
        ('asset.provenance.author == "me"', ACTIVATION, "No such overload"),
        ("asset.tags[5]", ACTIVATION, "index out of bounds: 5"),
        ("1 / 0", ACTIVATION, "division by zero"),
        ("9223372036854775807 + asset.size_bytes", ACTIVATION, "overflow"),
        ('asset.name.matches("(")', ACTIVATION, "not a valid regex"),
        ("undeclared == 1", ACTIVATION, "Undefined variable or function: 'undeclared'"),
        ("asset == null", {"asset": {1, 2}}, "Failed to convert"),  # not JSON: a set
        ("asset == null", {"asset": object()}, "Failed to convert"),
    ],
)
def test_runtime_errors_are_cel_eval_errors(
    expression: str, activation: dict[str, Any], says: str
) -> None:
    with pytest.raises(CelEvalError) as info:
        evaluate(compile_expression(expression), activation)
    assert says in info.value.message
    assert "\n" not in info.value.message


def test_a_null_variable_is_named_in_the_error() -> None:
    with pytest.raises(CelEvalError) as info:
        evaluate(
            compile_expression('artifact.format == "gguf"'), {"asset": ASSET, "artifact": None}
        )
    assert info.value.message.endswith("(artifact is null)")
    # a guard makes the rule hold for assets without scan facts
    guarded = compile_expression('artifact == null || artifact.format == "gguf"')
    assert evaluate(guarded, {"asset": ASSET, "artifact": None}) is True


def test_evaluate_condition_requires_a_bool() -> None:
    assert evaluate_condition(compile_expression("size(asset.tags) == 2"), ACTIVATION) is True
    assert evaluate_condition(compile_expression("size(asset.tags) == 3"), ACTIVATION) is False
    with pytest.raises(CelEvalError, match=r"returned int 2, not a bool"):
        evaluate_condition(compile_expression("size(asset.tags)"), ACTIVATION)
    with pytest.raises(CelEvalError, match=r"returned NoneType None, not a bool"):
        evaluate_condition(compile_expression("asset.description"), ACTIVATION)
