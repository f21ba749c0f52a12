"""Under nbval, a notebook cell whose run writes a warning to stderr fails: users read
these notebooks' outputs, and a red deprecation notice under every trace is a defect."""

from __future__ import annotations

import re

import pytest

WARNING_TEXT = re.compile(r"warn|deprecat|\[transformers\]|will be removed", re.IGNORECASE)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    outputs = getattr(item, "test_outputs", None) or []
    stderr = "".join(out.get("text", "") for out in outputs if out.get("name") == "stderr")
    lines = [line for line in stderr.splitlines() if WARNING_TEXT.search(line)]
    if lines:
        pytest.fail("the cell wrote warnings to stderr:\n" + "\n".join(lines), pytrace=False)
    return result
