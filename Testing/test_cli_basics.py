import subprocess
import sys

from LesionDetectLib import __version__


def test_version(run_cli, capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        run_cli("--version")
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_every_subcommand_has_help():
    from LesionDetectLib.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"info", "validate"} <= set(sub.choices)
    for name, p in sub.choices.items():
        assert p.format_help().strip(), name


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "LesionDetectLib", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "info" in out.stdout
