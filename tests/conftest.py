from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
LEMUR = ROOT / "examples"


@pytest.fixture(scope="session")
def shared_specs() -> Path:
    path = SHARED / "specs"
    if not path.is_dir():
        pytest.skip("../shared/specs is not beside the checkout")
    return path


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """`mattecli.cli.main()` installs its stop handlers (SIGINT, SIGTERM, SIGHUP) for the process:
    tests that call it in this process leave pytest's own as they found them."""
    import signal

    names = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    saved = {name: signal.getsignal(getattr(signal, name)) for name in names}
    yield
    for name, handler in saved.items():
        if handler is not None and signal.getsignal(getattr(signal, name)) is not handler:
            signal.signal(getattr(signal, name), handler)
