"""Fixtures of the publish tests: an editor's desk and a partner that hears only its stories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.desk import Desk, TaggedPartner, make_desk, tagged_partner
from tests.helpers.pipeline import Pipeline


@pytest.fixture
def desk(pipeline: Pipeline) -> Desk:
    return make_desk(pipeline)


@pytest.fixture
def partner(desk: Desk) -> Iterator[TaggedPartner]:
    with tagged_partner(desk) as tagged:
        yield tagged
