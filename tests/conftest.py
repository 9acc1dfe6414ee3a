import pytest


@pytest.fixture
def cast(db):
    """An active agreement between Org A, B and C, with a dataset each, a plan, and every
    actor a permission test needs."""
    from tests.factories import build_cast  # imported here: the pure suites run without Django

    return build_cast()
