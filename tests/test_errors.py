import json

import pytest

from peaknet_serve.errors import BadRequest, PayloadTooLarge, RequestError, UnsupportedMediaType


@pytest.mark.parametrize(("cls", "status"), [(BadRequest, 400), (PayloadTooLarge, 413), (UnsupportedMediaType, 415)])
def test_each_subclass_carries_its_status(cls, status):
    error = cls("some_type", "what was wrong; what is accepted.")
    assert isinstance(error, RequestError)
    assert error.status == status
    assert error.type == "some_type"
    assert error.message == "what was wrong; what is accepted."
    assert str(error) == error.message


def test_to_json_is_the_documented_body_and_serialisable():
    body = PayloadTooLarge("too_large", "too many pixels.").to_json()
    assert body == {"error": {"type": "too_large", "message": "too many pixels.", "status": 413}}
    assert json.loads(json.dumps(body)) == body
