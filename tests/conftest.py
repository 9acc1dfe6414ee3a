import pytest

from tests.factories import build_cast


@pytest.fixture
def cast(db):
    """An active agreement between Org A, B and C, with a dataset each, a plan, and every
    actor a permission test needs."""
    return build_cast()
