"""Every shared fixture against the pydantic models: the TypeScript side tests against the same files."""

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from portrait_engine.protocol import EVENT, REQUEST

from .support import FIXTURES

EXPECT = "_expect_error_code"


def _fixtures(folder: str) -> list[Path]:
    paths = sorted((FIXTURES / folder).glob("*.json"))
    assert paths, f"no fixtures in {folder}"
    return paths


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", _fixtures("requests"), ids=lambda path: path.stem)
def test_valid_request_parses(path: Path):
    request = REQUEST.validate_python(_load(path))
    assert request.op in path.stem


@pytest.mark.parametrize("path", _fixtures("events"), ids=lambda path: path.stem)
def test_valid_event_parses_and_is_exactly_what_the_engine_writes(path: Path):
    data = _load(path)
    event = EVENT.validate_python(data)
    assert json.loads(event.model_dump_json()) == data


@pytest.mark.parametrize("path", _fixtures("invalid-requests"), ids=lambda path: path.stem)
def test_invalid_request_is_rejected(path: Path):
    data = _load(path)
    assert data.pop(EXPECT) == "bad_request"  # the other codes depend on files, not on the message
    with pytest.raises(ValidationError):
        REQUEST.validate_python(data)


def test_readme_lists_every_fixture():
    readme = (FIXTURES / "README.md").read_text(encoding="utf-8")
    for folder in ("requests", "events", "invalid-requests"):
        for path in _fixtures(folder):
            assert f"`{path.name}`" in readme, path
