"""Shell completions: in sync with the CLI, and working in a real bash (zsh, fish when present)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox_cli import completion
from sandbox_cli.state import SandboxRecord, StateStore

ROOT = Path(__file__).resolve().parents[2]
COMPLETIONS = ROOT / "completions"
NAMES = ["box-a", "box-b", "web.1"]


@pytest.fixture(scope="module")
def model() -> completion.Model:
    return completion.load_model()


@pytest.fixture
def state_home(tmp_path: Path) -> Path:
    """A SANDBOX_HOME whose state file, written by the real StateStore, holds NAMES."""
    home = tmp_path / "sandbox-home"
    store = StateStore(str(home))
    with store.transaction() as records:
        for name in NAMES:
            records[name] = SandboxRecord(name=name, container_id="c0ffee", image="busybox",
                                          created_at="2024-01-01T00:00:00Z", expires_at=None,
                                          keep=True, env_keys=["TOKEN"],
                                          options={"memory": "1g", "cpus": 1.0})
    return home


# ------------------------------------------------------------------------- generated files


@pytest.mark.parametrize("name", sorted(completion.GENERATORS))
def test_committed_scripts_match_the_cli(model: completion.Model, name: str) -> None:
    path = COMPLETIONS / name
    expected = completion.generate(model)[name]
    assert path.exists(), f"{path} is missing: run scripts/gen-completions"
    assert path.read_text(encoding="utf-8") == expected, (
        f"completions/{name} is out of date with the CLI's options: run scripts/gen-completions "
        "and commit the result"
    )


def test_gen_completions_check_passes() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen-completions"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generation_does_not_import_rich() -> None:
    code = ("import sys; from sandbox_cli import completion as c; c.generate(c.load_model()); "
            "assert 'rich' not in sys.modules, 'rich imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_model_knows_which_arguments_are_sandbox_names(model: completion.Model) -> None:
    """Kinds are keyed by parameter names in cli.py: renaming one must not go unnoticed."""
    kinds = {command.name: command.argument_kinds() for command in model.commands}
    for name in ("exec", "write", "read", "copy-to", "disconnect"):
        assert kinds[name][0] == completion.SANDBOX, name
    assert kinds["purge"] == ["sandbox..."]
    assert kinds["exec"][1] == "argv..."
    assert kinds["run"] == ["argv..."]
    assert kinds["copy-to"][1] == completion.FILE
    assert kinds["start"] == [] and kinds["ls"] == []


def test_model_options(model: completion.Model) -> None:
    commands = {command.name: command for command in model.commands}
    exec_ = commands["exec"]
    assert {"--timeout", "--env", "-e", "--workdir", "-w", "--json", "--help", "-h"} <= set(
        exec_.flags())
    assert "--timeout" in exec_.valued() and "--json" not in exec_.valued()
    assert {"--network", "--no-network"} <= set(commands["start"].flags())
    assert "--network" not in commands["start"].valued()
    assert {"--verbose", "-v", "--version", "--help", "-h"} <= set(model.program.flags())


def test_short_help() -> None:
    assert completion.short_help("Publish X; binds Y. Needs --network. Repeatable.") == \
        "Publish X; binds Y"
    assert completion.short_help("OCI runtime, e.g. runsc for gVisor.") == \
        "OCI runtime, e.g. runsc for gVisor"
    assert completion.short_help(None) == ""


# ---------------------------------------------------------------------------------- bash


def bash_complete(home: Path, line: str, words: list[str] | None = None) -> list[str]:
    """COMPREPLY of _sandbox in a real bash, completing at the end of LINE.

    WORDS is COMP_WORDS as bash would split it (give it when LINE has `=` or `:`, which bash
    splits words at); by default LINE split at spaces, plus an empty word after a trailing one.
    """
    if words is None:
        words = line.split() + ([""] if line.endswith(" ") else [])
    script = "\n".join([
        f"source {shlex.quote(str(COMPLETIONS / 'sandbox.bash'))}",
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})",
        f"COMP_CWORD={len(words) - 1}",
        f"COMP_LINE={shlex.quote(line)}",
        f"COMP_POINT={len(line)}",
        "_sandbox || exit 3",
        'printf "%s\\n" "${COMPREPLY[@]}"',
    ])
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "SANDBOX_HOME": str(home)},
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_subcommands(state_home: Path, model: completion.Model) -> None:
    assert bash_complete(state_home, "sandbox ") == [c.name for c in model.commands]
    assert bash_complete(state_home, "sandbox -v ex") == ["exec"]
    assert "--version" in bash_complete(state_home, "sandbox --")


def test_bash_options(state_home: Path) -> None:
    assert "--timeout" in bash_complete(state_home, "sandbox exec --t")
    assert set(bash_complete(state_home, "sandbox exec box-a -")) >= {"--env", "-e", "--json"}
    assert bash_complete(state_home, "sandbox purge --a") == ["--all"]


def test_bash_sandbox_names(state_home: Path) -> None:
    assert bash_complete(state_home, "sandbox exec ") == NAMES
    assert bash_complete(state_home, "sandbox exec box") == ["box-a", "box-b"]
    for command in ("write", "read", "copy-to", "disconnect", "purge"):
        assert bash_complete(state_home, f"sandbox {command} ") == NAMES, command


def test_bash_purge_takes_several_names(state_home: Path) -> None:
    names = bash_complete(state_home, "sandbox purge box-a ")
    assert "box-b" in names and "web.1" in names
    assert "box-a" not in names  # already given
    assert bash_complete(state_home, "sandbox purge --json box-a web.1 ") == ["box-b"]


def test_bash_no_names_in_the_command_line_of_exec(state_home: Path) -> None:
    assert bash_complete(state_home, "sandbox exec box-a ") == []
    assert bash_complete(state_home, "sandbox exec box-a ls -") == []
    assert bash_complete(state_home, "sandbox exec -- ") == []
    assert bash_complete(state_home, "sandbox exec --timeout 5 box-a sh ") == []
    assert bash_complete(state_home, "sandbox run ") == []


def test_bash_option_values_are_skipped(state_home: Path) -> None:
    assert bash_complete(state_home, "sandbox exec --timeout ") == []  # the value, not a name
    assert bash_complete(state_home, "sandbox exec --timeout 5 ") == NAMES
    assert bash_complete(state_home, "sandbox -v exec -w /app ") == NAMES
    assert bash_complete(state_home, "sandbox exec --json ") == NAMES  # a flag takes no value
    # bash splits words at `=` and `:`; the script glues them back together
    assert bash_complete(state_home, "sandbox exec --env A=1 ",
                         ["sandbox", "exec", "--env", "A", "=", "1", ""]) == NAMES
    assert bash_complete(state_home, "sandbox exec --timeout=5 ",
                         ["sandbox", "exec", "--timeout", "=", "5", ""]) == NAMES
    assert bash_complete(state_home, "sandbox start -p 80:80 --tt",
                         ["sandbox", "start", "-p", "80", ":", "80", "--tt"]) == ["--ttl"]


def test_bash_without_state_file(tmp_path: Path) -> None:
    assert bash_complete(tmp_path / "nothing-here", "sandbox exec ") == []
    assert bash_complete(tmp_path / "nothing-here", "sandbox purge ") == []


def test_bash_names_from_a_hostile_state_file(tmp_path: Path) -> None:
    """Only lines shaped like a valid name count: nothing reaches compgen -W's expansions."""
    home = tmp_path / "home"
    home.mkdir()
    marker = tmp_path / "pwned"
    (home / "state.json").write_text(
        '{\n  "sandboxes": {\n'
        f'    "x": {{\n      "name": "$(touch {marker})",\n      "name": "`touch {marker}`",\n'
        '      "name": "-rf",\n      "name": "ok-1",\n      "name": "a b"\n    }\n  }\n}\n')
    assert bash_complete(home, "sandbox exec ") == ["ok-1"]
    assert not marker.exists()


def test_bash_unknown_command(state_home: Path) -> None:
    assert bash_complete(state_home, "sandbox bogus ") == []


# ----------------------------------------------------------------------------- zsh, fish


def need(shell: str) -> str:
    path = shutil.which(shell)
    if path is None:
        pytest.skip(f"{shell} is not installed")
    return path


@pytest.mark.parametrize(("shell", "name"), [("zsh", "_sandbox"), ("fish", "sandbox.fish")])
def test_script_parses(shell: str, name: str) -> None:
    proc = subprocess.run([need(shell), "-n", str(COMPLETIONS / name)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def fish_complete(home: Path, line: str) -> list[str]:
    """The candidates (without descriptions) fish offers at the end of LINE."""
    script = (f"source {shlex.quote(str(COMPLETIONS / 'sandbox.fish'))}; "
              f"complete -C {shlex.quote(line)}")
    proc = subprocess.run([need("fish"), "--no-config", "-c", script], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "SANDBOX_HOME": str(home),
                                          "HOME": str(home)}, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [entry.split("\t")[0] for entry in proc.stdout.splitlines()]


def test_fish_completes(state_home: Path, model: completion.Model) -> None:
    assert sorted(fish_complete(state_home, "sandbox ")) == sorted(c.name for c in model.commands)
    assert "--timeout" in fish_complete(state_home, "sandbox exec --t")
    assert fish_complete(state_home, "sandbox exec ") == NAMES
    assert fish_complete(state_home, "sandbox purge box-a ") == ["box-b", "web.1"]
    assert fish_complete(state_home, "sandbox exec box-a ") == []
    assert fish_complete(state_home, "sandbox exec -- ") == []
    assert fish_complete(state_home, "sandbox exec --timeout 5 ") == NAMES


ZSH_STUBS = """
compdef() { : }
_describe() { print -rl -- "${(@)${(@P)${@[-1]}}%%:*}" }
_wanted() { shift 3; "$@" }
compadd() { print -rl -- "${(@P)${@[-1]}}" }
_files() { print -r -- '<files>' }
_message() { : }
compset() { [[ $1 == -P ]] && PREFIX=${PREFIX#*=} }
"""


def zsh_complete(home: Path, line: str) -> list[str]:
    """What _sandbox hands to _describe/compadd at the end of LINE, with those stubbed (a real
    completion needs a terminal)."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    script = "\n".join([
        ZSH_STUBS,
        f"source {shlex.quote(str(COMPLETIONS / '_sandbox'))}",
        f"words=({' '.join(shlex.quote(w) for w in words)})",
        f"CURRENT={len(words)}",
        "PREFIX=$words[CURRENT]",
        "_sandbox",
    ])
    proc = subprocess.run([need("zsh"), "-f", "-c", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "SANDBOX_HOME": str(home)}, timeout=30)
    assert proc.stderr == ""
    return [w for w in proc.stdout.splitlines() if w]


def test_zsh_completes(state_home: Path, model: completion.Model) -> None:
    assert zsh_complete(state_home, "sandbox ") == [c.name for c in model.commands]
    assert "--timeout" in zsh_complete(state_home, "sandbox exec --t")
    assert zsh_complete(state_home, "sandbox exec ") == NAMES
    assert zsh_complete(state_home, "sandbox purge box-a ") == ["box-b", "web.1"]
    assert zsh_complete(state_home, "sandbox exec box-a ") == []
    assert zsh_complete(state_home, "sandbox exec --timeout 5 ") == NAMES
    assert zsh_complete(state_home, "sandbox copy-to box-a ") == ["<files>"]
