"""The test tree itself: pytest imports test modules by basename (rootdir without packages), so
a unit and an integration test module of the same name stop the whole run at collection."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent


def test_no_test_module_name_is_used_twice() -> None:
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(TESTS)} and {path.relative_to(TESTS)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes
    assert len(seen) > 20  # it did look at both trees
