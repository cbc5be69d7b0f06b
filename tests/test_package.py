import microtrio


def test_version_and_exports() -> None:
    assert microtrio.__version__
    for name in microtrio.__all__:
        assert hasattr(microtrio, name), name


def test_error_statuses() -> None:
    assert microtrio.ValidationError.status == 400
    assert microtrio.ForbiddenError.status == 403
    assert issubclass(microtrio.DatabaseNotOpenError, microtrio.UnavailableError)
    assert microtrio.RemoteError("x", 409).status == 409
