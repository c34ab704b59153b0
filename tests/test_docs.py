"""Every command shown in README.md and docs/*.md works: a documented command that fails is a bug.

Commands are the lines of ```bash blocks (a line ending in a backslash continues on the next; blank lines and
comments are skipped, and so is a trailing ``# comment``). One simple command per line: pipes, ``&&``,
redirections and substitutions are refused, so that what a reader copies is what the test runs.

* A command right below a ``# needs: <what>`` line (a GPU, a real dataset, ...) cannot run here and is only
  checked: its program exists and its flags parse with that program's own argparse parser (the program is run
  up to its ``parse_args`` call, which is stopped there; ``torchrun`` is checked with torchrun's parser and
  then its training script with the script's).
* Every other command gets the same check (fast, not ``slow``) and is then run (``slow``) in document order,
  one fresh workspace per page, like a reader following that page: the repository's code linked in, the tiny
  synthetic dataset at ``data/synthetic``, a tiny trained model in ``logs/demo/`` (``model_best.pth.tar`` and
  the other files of its run), an empty torch cache (no ImageNet weights, as on a machine without internet),
  no GPU, and ``python`` meaning this interpreter. Overrides appended to the command keep it tiny (argparse
  keeps the last occurrence of a flag): ``TINY_MAIN_FLAGS`` for main.py (also under torchrun), ``--epochs``
  capped at ``MAX_EPOCHS``, ``--dpi`` for the feature tools, a small ``reid.datasets.synthetic``.
  ``python -m pytest`` runs with ``--collect-only`` (running the suite from inside the suite would recurse).
* ``make`` commands are checked with ``make -n``, never run (their recipes train full-size demos and
  ablations): the target must exist, every ``VAR=value`` must name a variable the Makefile uses, and every
  project command the recipe would run must pass the flag check above.
"""
import argparse
import contextlib
import glob
import io
import os
import pathlib
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))]
PYTHONS = {"python", "python3", ".venv/bin/python"}
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ";;", "<", ">", ">>", "(", ")"}
NEEDS = re.compile(r"^#\s*needs:\s*\S")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
TINY_MAIN_FLAGS = ["-a", "resnet18", "--height", "96", "--width", "32", "-b", "16", "-j", "0", "--features", "32"]
MAX_EPOCHS = 2
TINY_TOOL_FLAGS = ["--dpi", "40"]
TINY_SYNTHETIC_FLAGS = ["--train-ids", "3", "--test-ids", "3", "--cameras", "2", "--images-per-camera", "2",
                        "--height", "64", "--width", "32"]
FEATURE_TOOLS = {"single_images_features_3.py", "single_features_cam.py"}
NOT_LINKED = {".git", "data", "logs", "sample_features", "feature_maps", "cams", ".pytest_cache", ".hypothesis",
              "__pycache__"}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    needs: str  # what the command needs that a test cannot have; "" when it runs here

    @property
    def where(self):
        return f"{self.page}:{self.line}"


def _bash_blocks(lines):
    """``(first line number, lines)`` of each ```bash block."""
    block, start = None, 0
    for number, line in enumerate(lines, 1):
        fence = line.strip()
        if block is None and fence in ("```bash", "```sh", "```shell"):
            block, start = [], number + 1
        elif block is not None and fence.startswith("```"):
            yield start, block
            block = None
        elif block is not None:
            block.append(line)


def page_commands(page):
    """The commands of one page, with the ``# needs:`` line above each, if any."""
    with open(os.path.join(REPO, page), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    commands = []
    for start, block in _bash_blocks(lines):
        previous, pending, first = "", [], 0
        for number, line in enumerate(block, start):
            if not pending:
                if not line.strip() or line.strip().startswith("#"):
                    previous = line.strip()
                    continue
                first = number
                needs = previous.partition(":")[2].strip() if NEEDS.match(previous) else ""
            pending.append(line.rstrip()[:-1] if line.rstrip().endswith("\\") else line)
            if not line.rstrip().endswith("\\"):
                commands.append(Command(page, first, " ".join(part.strip() for part in pending), needs))
                pending, previous = [], line.strip()
    return commands


ALL_COMMANDS = [command for page in PAGES for command in page_commands(page)]


def split(command):
    """``(environment assignments, argv)`` of a simple command; refuses shell operators."""
    lexer = shlex.shlex(command.text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    operators = [token for token in tokens if token in SHELL_OPERATORS or "$(" in token or "`" in token]
    assert not operators, (f"{command.where}: `{command.text}` uses {operators}: write one simple command per "
                           f"line, as a reader would type it")
    environment = {}
    while tokens and ASSIGNMENT.match(tokens[0]):
        name, _, value = tokens.pop(0).partition("=")
        environment[name] = value
    assert tokens, f"{command.where}: `{command.text}` has no program"
    return environment, tokens


class _Parsed(Exception):
    """Raised in place of returning from ``parse_args``: the flags were accepted."""

    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


_ORIGINAL_PARSE_ARGS = argparse.ArgumentParser.parse_args


def _parse_and_stop(parser, args=None, namespace=None):
    raise _Parsed(_ORIGINAL_PARSE_ARGS(parser, args, namespace))


def parse_with_program(where, target, args, module=False):
    """Run the script (or ``-m`` module) ``target`` with ``args`` up to its ``parse_args``; its Namespace.

    A SystemExit before that (argparse's error for an unknown flag or a bad value) fails the test with the
    program's message.
    """
    saved_argv, errors = sys.argv, io.StringIO()
    sys.argv = [target, *args]
    try:
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(errors), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # runpy: "found in sys.modules"; torchrun: "fault handler"
            patch.setattr(argparse.ArgumentParser, "parse_args", _parse_and_stop)
            if module:
                runpy.run_module(target, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(os.path.join(REPO, target), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as stop:
        pytest.fail(f"{where}: {target} refuses the flags {args} (exit {stop.code}): {errors.getvalue()}")
    finally:
        sys.argv = saved_argv
    pytest.fail(f"{where}: {target} ran to the end without parsing its flags with argparse")


def _project_module(name):
    return name.split(".")[0] in ("reid", "benchmarks") or name == "torch.distributed.run"


def _is_project_command(args):
    """True for ``python ARGS`` that runs one of the repository's scripts or modules."""
    if args[:1] == ["-m"] and len(args) > 1:
        return _project_module(args[1])
    return bool(args) and args[0].endswith(".py")


def check_python(where, args):
    """Check ``python ARGS``: the script or module exists and accepts its flags; ``-c`` code compiles."""
    assert args, f"{where}: python without arguments"
    if args[0] == "-c":
        compile(args[1], where, "exec")
    elif args[0] == "-m":
        name = args[1]
        if name == "pytest":
            return
        assert _project_module(name), f"{where}: unknown module {name}"
        parse_with_program(where, name, args[2:], module=True)
    else:
        assert os.path.isfile(os.path.join(REPO, args[0])), f"{where}: no script {args[0]} in the repository"
        parse_with_program(where, args[0], args[1:])


def check_torchrun(where, args):
    """torchrun's own parser first (it rejects ambiguous abbreviations such as ``--log``), then the script's."""
    namespace = parse_with_program(where, "torch.distributed.run", args, module=True)
    check_python(where, [namespace.training_script, *namespace.training_script_args])


def make_dry_run(where, args, workspace):
    """``make -n ARGS`` in ``workspace``: the target exists, its variables are the Makefile's, every project
    command the recipe would run accepts its flags."""
    makefiles = "".join(pathlib.Path(REPO, name).read_text() for name in ("Makefile", "ablation.mk"))
    for assignment in filter(ASSIGNMENT.match, args):
        name = assignment.partition("=")[0]
        assert re.search(rf"\$\({name}\)|^{name}\s*[?:]?=", makefiles, re.MULTILINE), (
            f"{where}: the Makefile has no variable {name}")
    result = subprocess.run(["make", "-n", *args], cwd=workspace, capture_output=True, text=True,
                            env={**os.environ, "MAKEFLAGS": ""})
    assert result.returncode == 0, f"{where}: make -n {shlex.join(args)} failed:\n{result.stderr}"
    for line in result.stdout.splitlines():
        try:
            argv = shlex.split(line)
        except ValueError:
            continue
        if argv and argv[0] in PYTHONS and _is_project_command(argv[1:]):
            check_python(f"{where} (make -n: {line})", argv[1:])


def check(command, workspace=REPO):
    """The fast check every command gets, needed or not."""
    _, argv = split(command)
    program, args = argv[0], argv[1:]
    if program in PYTHONS:
        check_python(command.where, args)
    elif program == "torchrun":
        check_torchrun(command.where, args)
    elif program == "make":
        make_dry_run(command.where, args, workspace)
    else:
        assert command.needs, (f"{command.where}: `{command.text}`: the tests cannot run {program}; put what "
                               f"it needs on a `# needs: <what>` line above it")


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=lambda command: command.where)
def test_documented_command_exists_and_its_flags_parse(command, tmp_path):
    check(command, workspace=link_code(tmp_path))


def test_the_readme_shows_commands_and_marks_the_ones_needing_what_tests_lack():
    readme = [command for command in ALL_COMMANDS if command.page == "README.md"]
    assert any(not command.needs for command in readme)
    assert any(command.needs for command in readme)


# ---- running the commands ----------------------------------------------------------------------------------

def _flag_value(args, *flags):
    """The value of the last occurrence of any of ``flags`` (``--flag value`` or ``--flag=value``)."""
    value = None
    for index, token in enumerate(args):
        name, equals, attached = token.partition("=")
        if name in flags:
            value = attached if equals else (args[index + 1] if index + 1 < len(args) else None)
    return value


def tiny_main_args(args):
    epochs = _flag_value(args, "--epochs")
    capped = MAX_EPOCHS if epochs is None else min(int(epochs), MAX_EPOCHS)
    return [*args, *TINY_MAIN_FLAGS, "--epochs", str(capped)]


def tiny_python_args(args):
    """``python ARGS`` with the overrides that keep it tiny."""
    if args[0] == "main.py":
        return tiny_main_args(args)
    if args[0] in FEATURE_TOOLS:
        return [*args, *TINY_TOOL_FLAGS]
    if args[:2] == ["-m", "reid.datasets.synthetic"]:
        return [*args, *TINY_SYNTHETIC_FLAGS]
    if args[:2] == ["-m", "pytest"]:
        return [*args, "--collect-only", "-q"]
    return args


def runnable_argv(command):
    """The argv that runs ``command`` here, and its extra environment."""
    environment, argv = split(command)
    program, args = argv[0], argv[1:]
    if program in PYTHONS:
        return [sys.executable, *tiny_python_args(args)], environment
    if program == "torchrun":
        namespace = parse_with_program(command.where, "torch.distributed.run", args, module=True)
        script_at = len(args) - len(namespace.training_script_args) - 1
        return [sys.executable, "-m", "torch.distributed.run", *args[:script_at],
                *tiny_python_args(args[script_at:])], environment
    pytest.fail(f"{command.where}: no way to run {program} here")


@pytest.fixture(scope="module")
def trained_demo(tiny_synthetic, tiny_args, tmp_path_factory):
    """A logs folder of a one-epoch tiny run, standing for ``logs/demo`` after ``make demo``."""
    logs = tmp_path_factory.mktemp("trained") / "demo"
    result = subprocess.run([sys.executable, os.path.join(REPO, "main.py"),
                             *tiny_args(tiny_synthetic, logs, "--epochs", "1", "--combine-trainval")],
                            capture_output=True, text=True, env=_environment(tmp_path_factory.mktemp("torch")))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return logs


def _environment(torch_home, extra=None):
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            "TORCH_HOME": str(torch_home), **(extra or {})}


def link_code(root):
    """Link the repository's code (not its data, logs or outputs) into the folder ``root``."""
    for entry in os.listdir(REPO):
        if entry not in NOT_LINKED:
            os.symlink(os.path.join(REPO, entry), root / entry)
    return root


def make_workspace(root, dataset, trained):
    """A folder laid out like the repository after ``make demo``: code linked, data and logs/demo in place."""
    link_code(root)
    (root / "data").mkdir()
    os.symlink(dataset, root / "data" / "synthetic")
    shutil.copytree(trained, root / "logs" / "demo")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_documented_commands_run_on_tiny_data(page, tiny_synthetic, trained_demo, tmp_path):
    (tmp_path / "workspace").mkdir()
    workspace = make_workspace(tmp_path / "workspace", tiny_synthetic, trained_demo)
    torch_home = tmp_path / "torch-home"
    for command in page_commands(page):
        if command.needs:
            continue
        check(command, workspace)
        if split(command)[1][0] == "make":
            continue
        argv, environment = runnable_argv(command)
        result = subprocess.run(argv, cwd=workspace, capture_output=True, text=True, timeout=900,
                                env=_environment(torch_home, environment))
        assert result.returncode == 0, (f"{command.where}: `{command.text}` exited with {result.returncode}; "
                                        f"ran {shlex.join(argv)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


# ---- links between the pages ---------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path):
    """The anchors GitHub gives the headings of a Markdown file (outside code blocks)."""
    anchors, in_code = set(), False
    for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_point_to_existing_files_and_headings(page):
    source = os.path.join(REPO, page)
    for target in LINK.findall(pathlib.Path(source).read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(source), path)) if path else source
        assert os.path.exists(linked), f"{page}: the link {target} points to a missing file"
        if anchor and linked.endswith(".md"):
            assert anchor in heading_anchors(linked), f"{page}: the link {target} names no heading of {path or page}"
