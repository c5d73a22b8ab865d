"""``dtlabel <command> [options] [key=value ...]``: the command-line entry point.

Options map onto config keys (``--seed 3`` is ``seed=3``); everything of the form ``key=value`` is a
Hydra override (``data=ccp data.root=PATH fit.steps=500``). ``main(argv) -> int`` is what the
console script calls and what tests call. User errors print one line and return 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dtlabel import __version__, interrupts
from dtlabel.errors import ConfigError, DTLabelError, did_you_mean

log = logging.getLogger("dtlabel")


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    key: str | None  # config key it sets (None: read from the parsed args by the command)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Command:
    name: str            # as typed: "fit-teacher", "data check"
    target: str          # "module:function" under dtlabel.commands
    help: str
    options: tuple[Option, ...] = ()
    keeps_folder: bool = True   # False: without --out the run folder is temporary (a check writes no runs/)

    @property
    def config_name(self) -> str:
        return self.name.replace(" ", "_").replace("-", "_")

    @property
    def run_name(self) -> str:
        return self.name.replace(" ", "-")


_TEACHER = Option(("--teacher",), "inputs.teacher",
                  {"metavar": "DIR", "help": "fit-teacher run folder or local diffusers model folder"})

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("data check", "data:check", "validate a data set and print a summary (with --out: its summary.json)",
            keeps_folder=False),
    Command("data preview", "data:preview", "write a PNG grid of image / mask overlays",
            (Option(("--split",), "split", {"help": "train, val, test or unlabeled"}),
             Option(("--n",), "n", {"type": int, "help": "number of samples"}))),
    Command("fit-teacher", "fit_teacher:run", "train a DDPM (fit.family=gan: a GAN) teacher on unlabeled images",
            (Option(("--steps",), "fit.steps", {"type": int, "help": "optimisation steps"}),
             Option(("--images",), None, {"metavar": "DIR", "help": "train on this image folder (data=images)"}))),
    Command("pretrain", "pretrain:run", "distil a teacher's features (and with --head its labels) into a timm backbone",
            (_TEACHER,
             Option(("--images",), None, {"metavar": "DIR", "help": "pretrain on this image folder (data=images)"}),
             Option(("--head",), "inputs.head", {"metavar": "DIR", "help": "train-head run: mix distillation"}))),
    Command("train-head", "train_head:run", "train a few-label head (interpreter | mlp-ensemble) on teacher features",
            (Option(("--labels",), "labels", {"type": int, "metavar": "N", "help": "number of labeled training images"}),
             _TEACHER)),
    Command("synthesize", "synthesize:run", "sample (or --images: read) images and pseudo-label them into tar shards",
            (Option(("--n", "--num-samples"), "n", {"type": int, "metavar": "N",
                    "help": "number of samples (--images: default all); under torchrun write --num-samples"}),
             _TEACHER,
             Option(("--head",), "inputs.head", {"metavar": "DIR", "help": "train-head run folder"}),
             Option(("--labeler",), "inputs.labeler",
                    {"metavar": "RUN", "help": "a train-head or train-student run labels (a student needs no teacher)"}),
             Option(("--ensemble",), "inputs.ensemble",
                    {"metavar": "RUN", "nargs": "+", "help": "train-head / train-student runs: their mean probabilities "
                     "label, their disagreement is the uncertainty"}),
             Option(("--images",), "inputs.images",
                    {"metavar": "DIR", "help": "label the images of this folder (recursive) instead of sampling"}),
             Option(("--for-labeling",), "for_labeling", {"action": "store_true", "default": None,
                    "help": "--n samples of a GAN and their latents, for a person to label (then import-labels)"}))),
    Command("import-labels", "import_labels:run", "labels from CVAT, Label Studio or PNG masks into a --for-labeling set",
            (Option(("labeling",), "inputs.labeling", {"metavar": "RUN", "nargs": "?", "help": "--for-labeling run"}),
             Option(("--from",), "inputs.source", {"metavar": "PATH", "help": "the tool's export (zip, JSON, folder)"}),
             Option(("--format",), "format", {"help": "cvat | labelstudio | png"}),
             Option(("--classes",), "classes", {"metavar": "NAME", "nargs": "+", "help": "labelstudio"})), keeps_folder=False),
    Command("train-student", "train_student:run", "train an smp student on pseudo-labels (--synth) and/or real labels",
            (Option(("--labels",), "labels", {"type": int, "metavar": "N", "help": "number of real labeled training images"}),
             Option(("--synth",), "inputs.synth", {"metavar": "DIR", "help": "synthesize run folder (pseudo-labels)"}),
             Option(("--backbone",), "inputs.backbone", {"metavar": "DIR", "help": "encoder weights file or run folder"}),
             Option(("--init",), "inputs.init", {"metavar": "DIR", "help": "start the whole student from a train-student "
                                                 "run (two-stage: pseudo-labels first, then the real labels)"}))),
    Command("eval", "eval:run", "evaluate a student or a head on a labeled split (metrics, overlays, confusion)",
            (Option(("--student",), "inputs.student", {"metavar": "DIR", "help": "train-student run folder"}),
             Option(("--head",), "inputs.head", {"metavar": "DIR", "help": "train-head run folder"}),
             Option(("--teacher",), "inputs.teacher", {"metavar": "DIR", "help": "the head's teacher (default: from its run)"}),
             Option(("--split",), "split", {"help": "train, val or test"}))),
    Command("suggest", "suggest:run", "rank unlabeled images for labeling next (uncertain, and unlike the labeled ones)",
            (Option(("--head",), "inputs.head", {"metavar": "DIR", "help": "train-head run folder"}),
             Option(("--n",), "n", {"type": int, "metavar": "K", "help": "how many images to suggest"}),
             _TEACHER,
             Option(("--images",), "inputs.images", {"metavar": "DIR", "help": "suggest from this folder"}))),
    Command("export", "export:run", "write a synthesize run's pseudo-labels for an annotation tool (coco, png, cvat, labelstudio)",
            (Option(("synth",), "inputs.synth", {"metavar": "RUN", "nargs": "?", "help": "finished synthesize run folder"}),
             Option(("--format",), "format", {"help": "coco | png | cvat | labelstudio"}))),
    Command("demo", "demo:run", "the whole method on the embedded default data, ending with a results table and "
            "report.html",
            (Option(("--labels",), "labels", {"type": int, "metavar": "N", "help": "number of labeled images"}),
             Option(("--fit-teacher",), "demo.fit_teacher", {"action": "store_true", "default": None,
                                                             "help": "train the teacher instead of the shipped one"}))),
    Command("report", "report:run", "a self-contained HTML report (results, predictions, pictures, commands) of runs",
            (Option(("runs",), None, {"metavar": "RUN", "nargs": "*", "help": "finished run folders (a demo folder: "
                                      "all its stages)"}),)),
)}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + exits; we want one line
        raise ConfigError(message)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<command>/<timestamp>)")
    p.add_argument("--preset", help="tiny (seconds, tests) | cpu (real data on a CPU) | gpu (paper scale)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--seed", type=int, help="global seed")
    p.add_argument("--resume", action="store_true", help="continue an unfinished run in --out")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dtlabel", description="Label distillation and semi-supervised segmentation with generative "
                     "teachers (DreamTeacher): dtlabel <command> [options] [key=value ...]",
                     epilog="Overrides: key=value after the options, e.g. data=ccp data.root=PATH preset=tiny.")
    parser.add_argument("--version", action="version", version=f"dtlabel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)
    groups: dict[str, argparse._SubParsersAction] = {}
    for cmd in COMMANDS.values():
        words = cmd.name.split(" ")
        if len(words) == 2:
            if words[0] not in groups:
                gp = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = gp.add_subparsers(dest="subcommand", metavar="<subcommand>", parser_class=_Parser)
            p = groups[words[0]].add_parser(words[1], help=cmd.help, description=cmd.help)
        else:
            p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        _common(p)
        for opt in cmd.options:
            p.add_argument(*opt.flags, **opt.kwargs)
        p.set_defaults(_command=cmd.name)
    return parser


def parse(argv: Sequence[str]) -> tuple[Command, argparse.Namespace, list[str]]:
    argv = list(argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        raise SystemExit(0)
    first = argv[0]
    tops = {c.name.split(" ")[0] for c in COMMANDS.values()}
    if first not in tops and not first.startswith("-"):
        raise ConfigError(f"unknown command '{first}'{did_you_mean(first, tops)}; run dtlabel --help for the list")
    ns, rest = parser.parse_known_args(argv)
    if not getattr(ns, "_command", None):
        subs = sorted(c.name.split(" ")[1] for c in COMMANDS.values() if c.name.startswith(first + " "))
        raise ConfigError(f"'{first}' needs a subcommand: {', '.join(subs)}")
    cmd = COMMANDS[ns._command]
    overrides: list[str] = []
    for opt in cmd.options:  # nargs="+" swallows the key=value words that follow it: hand them back
        attr = opt.flags[0].lstrip("-").replace("-", "_")
        value = getattr(ns, attr, None)
        if opt.kwargs.get("nargs") == "+" and isinstance(value, list):
            words = [v for v in value if _OVERRIDE_WORD.match(v) and not Path(v).exists()]
            setattr(ns, attr, [v for v in value if v not in words])
            rest = [*words, *rest]
            if not getattr(ns, attr):
                raise ConfigError(f"{opt.flags[0]} needs at least one run folder before the key=value overrides")
    for tok in rest:
        if tok.startswith("-"):
            flags = [f for o in cmd.options for f in o.flags] + ["--out", "--preset", "--device", "--seed", "--resume"]
            raise ConfigError(f"unknown option {tok} for '{cmd.name}'{did_you_mean(tok.split('=')[0], flags)}")
        if "=" not in tok:
            raise ConfigError(f"cannot parse '{tok}': overrides are key=value (e.g. data.root=PATH)")
        overrides.append(tok)
    return cmd, ns, overrides


def option_overrides(cmd: Command, ns: argparse.Namespace) -> list[str]:
    """Overrides implied by options; they come before the user's key=value so those win."""
    out: list[str] = []
    if ns.preset:
        out.append(f"preset={ns.preset}")
    if ns.device:
        out.append(f"device={ns.device}")
    if ns.seed is not None:
        out.append(f"seed={ns.seed}")
    for opt in cmd.options:
        value = getattr(ns, opt.flags[0].lstrip("-").replace("-", "_"), None)
        if opt.key and isinstance(value, list):  # nargs="+": a quoted list in Hydra's override grammar
            out.append(f"{opt.key}=[{','.join(_quoted(str(v)) for v in value)}]")
        elif opt.key and value is not None:
            out.append(f"{opt.key}={value}")
    images = next((o for o in cmd.options if o.flags[0] == "--images"), None)
    if images is not None and images.key is None and getattr(ns, "images", None):  # fit-teacher: a data set
        out += ["data=images", f"data.root={ns.images}"]
    return out


_OVERRIDE_WORD = re.compile(r"^[+~]*[A-Za-z_][\w.]*=")


def _quoted(value: str) -> str:
    """``value`` as a double-quoted string of Hydra's override grammar (backslashes and quotes escaped)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _RunLogHandler(logging.FileHandler):
    """The run folder's log file. A write that fails (a full disk) is dropped quietly: the command's
    own error line says what happened, where logging's default would print a traceback per record."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not isinstance(sys.exc_info()[1], OSError):
            super().handleError(record)


class _ConsoleHandler(logging.StreamHandler):
    """stdout; a reader that went away (``dtlabel ... | head``) ends the output, not the command."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if not isinstance(sys.exc_info()[1], BrokenPipeError):
            super().handleError(record)


def _setup_logging(log_file: Any, quiet: bool) -> list[logging.Handler]:
    root = logging.getLogger()
    console = _ConsoleHandler(sys.stdout)  # stderr is kept for the one-line error
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        fh = _RunLogHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(fh)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(logging.DEBUG if log_file is not None else logging.INFO)
    for noisy in ("PIL", "matplotlib", "urllib3", "filelock", "h5py", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handlers


# errno values that are the machine's state, not dtlabel's bug: one line and exit 2
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE}
# errors a path the user gave can cause: one line naming the path
_PATH_ERRORS = {errno.ENAMETOOLONG: "a name in the path is longer than the file system allows (255 bytes per "
                                    "folder or file name); choose a shorter one",
                errno.ENOTDIR: "a part of the path is a file, not a folder; check the path",
                errno.ELOOP: "the path goes round in a loop of symbolic links; check the links",
                errno.EISDIR: "the path is a folder where a file is expected; check the path"}


def _os_message(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device{where}; nothing unfinished was kept as finished: free some space, "
                "then rerun the same command with --resume")
    if exc.errno in _PATH_ERRORS:
        return f"{exc.strerror or type(exc).__name__}{where}: {_PATH_ERRORS[exc.errno]}"
    if exc.errno == errno.EMFILE:
        return (f"too many open files{where}; lower num_workers or raise the limit (ulimit -n), then rerun the "
                "same command with --resume")
    return (f"{exc.strerror or type(exc).__name__}{where}: a file dtlabel must read or write is not accessible; "
            "fix its permissions or choose another --out, then rerun the same command with --resume")


def _stdout_gone() -> bool:
    """True when our own stdout is a pipe whose reader left (poll reports an error on its write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's capture)
        return False


# commands whose run.json means their training ended (a time budget leaves no run.json): once finished,
# their checkpoints are dropped and --resume has nothing to do. fit-teacher and pretrain keep theirs:
# their budget-stopped runs are finished and exported, and --resume continues (or extends) them.
_FINISHED_IS_FINAL = ("train-head", "train-student")


def _fail(message: str, code: int, handlers: list[logging.Handler], prefix: str = "error: ") -> int:
    """Print the one error line on stderr, after closing any progress bar (so the line stands alone),
    and keep it in the run's log file too."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    sys.stderr.flush()
    print(f"dtlabel: {prefix}{message}", file=sys.stderr)
    record = logging.LogRecord("dtlabel", logging.ERROR, __file__, 0, prefix + "%s", (message,), None)
    for h in handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(record)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (0 ok, 2 user error, 130 / 143 stopped by SIGINT /
    SIGTERM: checkpointed where the command can be, continued with --resume)."""
    from dtlabel.config import check_seeds, compose
    from dtlabel.runs import Run, TimeBudgetReached, finished_command, folder_bytes

    # what a dtlabel run needs of its process, set when it runs (importing dtlabel changes nothing):
    # models load from local folders only, and albumentations does not look for updates
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    argv = sys.argv[1:] if argv is None else argv
    handlers: list[logging.Handler] = []
    run = None
    scratch = None
    try:
        cmd, ns, overrides = parse(argv)
        cfg = compose(cmd.config_name, option_overrides(cmd, ns) + overrides)
        check_seeds(cfg)
        if not cmd.keeps_folder and not ns.out:  # nothing to keep: a temporary run folder, removed at the end
            scratch = tempfile.TemporaryDirectory(prefix="dtlabel-")
            ns.out = str(Path(scratch.name) / cmd.run_name)
        if ns.resume and ns.out and cmd.name in _FINISHED_IS_FINAL and finished_command(Path(ns.out)) == cmd.name:
            print(f"{ns.out} is a finished {cmd.name} run: nothing to resume")  # its checkpoints are gone
            return 0
        run = Run.open(cmd.run_name, cfg, ns.out, resume=ns.resume)
        handlers = _setup_logging(run.log_file, ns.quiet or run.rank > 0)
        say = log.debug if scratch is not None else log.info  # a temporary folder is not worth a line
        say("dtlabel %s -> %s", " ".join(argv), run.path)
        module, func = cmd.target.split(":")
        fn = getattr(importlib.import_module(f"dtlabel.commands.{module}"), func)
        t0 = time.time()
        with interrupts.handling():  # SIGTERM / SIGINT: checkpoint at the next step, one line, 128 + signal
            descriptor = fn(run, cfg, ns) or {}
        descriptor.setdefault("seconds", round(time.time() - t0, 2))
        # the exact command, for reports (what a person would retype; --resume says it was continued)
        descriptor.setdefault("command_line", shlex.join(["dtlabel", *argv]))
        final = cmd.name in _FINISHED_IS_FINAL and run.rank == 0
        if run.rank == 0:  # what the finished folder keeps on disk (without the checkpoints it drops next)
            descriptor.setdefault("disk_mb", round(folder_bytes(run.path, "checkpoints" if final else None) / 1e6, 1))
        run.finish(**descriptor)
        if final:  # run.json is written: a finished head or student needs no checkpoint to resume
            shutil.rmtree(run.path / "checkpoints", ignore_errors=True)
        say("done in %.1fs: %s (%s MB)", time.time() - t0, run.path, descriptor.get("disk_mb", "?"))
        return 0
    except DTLabelError as exc:
        return _fail(str(exc), exc.exit_code, handlers)
    except BrokenPipeError:
        if not _stdout_gone():
            raise  # a worker's pipe, not the reader of our output: a real failure
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - `dtlabel ... | head`: the reader left
        return 0
    except OSError as exc:  # a full disk, a read-only folder: the user's to fix, not a bug
        if exc.errno not in _USER_OS_ERRORS and exc.errno not in _PATH_ERRORS:
            raise
        return _fail(_os_message(exc), 2, handlers)
    except TimeBudgetReached as exc:
        log.warning("%s", exc)
        return 0
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    except interrupts.Interrupted as exc:
        return _fail(str(exc), exc.exit_code, handlers, prefix="")
    except KeyboardInterrupt:
        print("dtlabel: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if run is not None:
            run.release()
        if scratch is not None:
            scratch.cleanup()
        root = logging.getLogger()
        for h in handlers:
            root.removeHandler(h)
            h.close()


def console_main() -> None:
    sys.exit(main())


if __name__ == "__main__":
    console_main()
