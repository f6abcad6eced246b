import pytest


@pytest.mark.slow  # `make demo`: about a minute and a half on a quiet 2-core CPU
def test_demo_beats_the_trivial_baseline(tmp_path, capsys):
    from mattecli.demo import main

    assert main(tmp_path / "demo") == 0
    out = capsys.readouterr().out
    assert "The model beats the trivial baseline (SAD" in out
    assert (tmp_path / "demo" / "mattes" / "lemur.png").is_file()
    assert (tmp_path / "demo" / "run" / "best.safetensors").is_file()
