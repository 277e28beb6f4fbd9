"""The `corral` command: `up` runs the whole system locally; the client commands (`run`, `exec`,
`cp`, `ls`, `sandbox`...) speak REST to a gateway (--url / CORRAL_URL) through the SDK.

Each command's module is imported only when that command runs (and only the chosen command's
arguments are defined), so `corral run` pays for neither the server's code nor the other
commands' (`python -X importtime -m corral.cli run ...` shows what a command imports).
"""

# No `from __future__ import annotations` here: typing.NamedTuple compiles each field's string
# annotation (a ForwardRef), which cost `corral run` more at its start than its whole parser.

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from corral import __version__
from corral.cli_client import add_connection_arguments

EXAMPLES = """examples:
  corral up                                   start every service (gateway on 127.0.0.1:8000)
  corral run 'echo hi' 'ls -la /app'          run two shell steps in a sandbox, follow them live
  corral run --python 'print(6 * 7)'
  corral run -f task.yaml --json              steps from a file, final status as JSON
  corral ls --state running                   tasks, newest first
  corral logs -f TASK_ID                      a task's output, followed live
  corral sandbox create --desktop --ttl 3600  a long-lived sandbox (prints its id and URLs)
  corral exec SANDBOX_ID -- ls -la            a command in it; its exit code is corral's
  corral cp ./src SANDBOX_ID:src              copy files in (or out: SANDBOX_ID:path ./here)
  corral pki init ./pki                       a CA and service certificates for another deployment
  corral keys create --admin --name admin --database   the first admin key (where the scheduler runs)
  CORRAL_API_KEY=crl_... corral keys create --name alice   a key for tenant alice

Client commands reach the gateway at --url or CORRAL_URL (default http://127.0.0.1:8000) with
the API key of --api-key or CORRAL_API_KEY.
"""


class Command(NamedTuple):
    """A subcommand: its module's `setup(parser)` defines its arguments and `run(args)` runs it
    (an exit code); by default `add_<name>` and `<name>`. `local` commands talk to no gateway.
    (A NamedTuple: the dataclasses module would cost every command's start more than all this.)"""

    name: str
    module: str
    help: str
    description: str = ""
    local: bool = False
    setup: str = ""
    run: str = ""

    def function(self, which: str) -> Any:
        module = sys.modules[__name__] if self.module == __name__ else importlib.import_module(self.module)
        base = self.name.replace("-", "_")
        name = (self.setup or f"add_{base}") if which == "setup" else (self.run or base)
        return getattr(module, name)


# One line per command (another command is one more line here and its own module).
COMMANDS = [
    Command("up", "corral.cli_up", "start scheduler, memory, executor and gateway locally", local=True,
            setup="add_arguments", run="main"),
    Command("run", "corral.cli_run", "run steps in a sandbox and follow them live",
            "Submit a task and print its output as it comes. Exit code: 0 if it completed; if it "
            "failed, the failed step's exit code (1 when it has none, e.g. a timeout or a refused "
            "step); 130 if cancelled (Ctrl-C cancels it); 2 on bad input or no gateway."),
    Command("status", "corral.cli_tasks", "show a task's state and step results"),
    Command("ls", "corral.cli_tasks", "list tasks, newest first"),
    Command("logs", "corral.cli_tasks", "a task's output (-f: follow it live)"),
    Command("cancel", "corral.cli_tasks", "cancel a task"),
    Command("exec", "corral.cli_exec", "run a command in a long-lived sandbox (exit code: the command's)"),
    Command("cp", "corral.cli_exec", "copy files or directories into or out of a sandbox (SANDBOX:PATH)"),
    Command("sandbox", "corral.cli_sandbox", "long-lived sandboxes: create, ls, rm, extend, network"),
    Command("keys", "corral.cli_keys", "API keys: create, ls, revoke"),
    Command("pki", "corral.cli_pki", "the deployment's CA and service certificates (compose, clusters)",
            local=True, setup="add_arguments", run="run"),
    Command("mcp", "corral.cli_mcp", "serve Corral's sandboxes as MCP tools (stdio, or --http)", local=True,
            setup="add_arguments", run="run"),
    Command("completion", "corral.cli", "print a shell completion script (bash or zsh)", local=True),
]
BY_NAME = {c.name: c for c in COMMANDS}


def add_completion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=["bash", "zsh"], nargs="?", default="bash")


def completion(args: argparse.Namespace) -> int:
    """A completion script for commands and their options: `eval "$(corral completion bash)"`."""
    parser = build_parser(None)
    words: dict[str, list[str]] = {}
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for name, sub in getattr(action, "choices", {}).items():
            flags = [o for a in sub._actions for o in a.option_strings]
            subs = [n for a in sub._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices]
            words[name] = subs + flags
    cases = "\n".join(f'        {name}) opts="{" ".join(w)}" ;;' for name, w in words.items())
    script = f"""_corral() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" cmd="" opts="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
    done
    case "$cmd" in
        "") opts="{' '.join(words)} --url --api-key --version --help" ;;
{cases}
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
"""
    if args.shell == "zsh":
        script = "autoload -U +X bashcompinit && bashcompinit\n" + script
    print(script + "complete -o default -F _corral corral")
    return 0


def _terminal_width() -> int:
    """shutil.get_terminal_size()'s columns, without importing shutil (argparse does, for every
    formatter it makes: one per argument added, to check its metavar)."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=_terminal_width() - 2)


def _top_formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, width=_terminal_width() - 2)


class _FullHelp(argparse.Action):
    """The top level's -h/--help when the parser defines one command only: the help of the
    parser that names them all (built then, for the help alone)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        build_parser("").print_help()
        parser.exit()


def build_parser(only: str | None) -> argparse.ArgumentParser:
    """The parser; with `only`, only that command's arguments are defined (the rest are named,
    for --help, without importing their modules); with `only` a command's name, only that
    command is (argparse makes a whole parser for each command named, a fifth of what
    `corral run` costs to start; the top level's --help builds the one naming them all)."""
    one = only in BY_NAME
    parser = argparse.ArgumentParser(
        prog="corral",
        description="Run AI agents' tasks in isolated sandboxes.",
        epilog=EXAMPLES,
        formatter_class=_top_formatter,
        add_help=not one,
    )
    if one:
        parser.add_argument("-h", "--help", action=_FullHelp, help="show this help message and exit")
    parser.add_argument("--version", action="version", version=f"corral {__version__}")
    add_connection_arguments(parser, top_level=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        if one and command.name != only:
            continue
        sub = commands.add_parser(command.name, help=command.help, description=command.description or None,
                                  formatter_class=_formatter)
        if only is not None and command.name != only:
            continue
        command.function("setup")(sub)
        if not command.local:
            add_connection_arguments(sub)
    return parser


# The top level's options that take a value (the next word, unless given as --url=URL).
_VALUED = ("--url", "--api-key")


def chosen_command(argv: Sequence[str]) -> str:
    """The command named in argv (the first word that is one and no option's value; '' for
    none), without parsing it all."""
    for before, word in zip(["", *argv], argv, strict=False):
        if word in BY_NAME and before not in _VALUED:
            return word
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `corral ARGS`; its exit code. A closed stdout (`corral run --events | head`) ends
    it quietly, not with a traceback."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that cannot fail too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a process killed by SIGPIPE
    except KeyboardInterrupt:
        return 130
    return code


def _main(argv: list[str]) -> int:
    args = build_parser(chosen_command(argv)).parse_args(argv)
    command = BY_NAME[args.command]
    if command.local:
        code: int = command.function("run")(args)
        return code
    from corral.cli_client import run_client_command

    return run_client_command(args, command.function("run"))


if __name__ == "__main__":
    sys.exit(main())
