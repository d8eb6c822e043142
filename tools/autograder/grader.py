"""The trusted side of grading: test cells run here, the student's names are proxies into the kernel.

``GraderSession(trusted_nb, send)`` holds one namespace per submission, built from
the *trusted* notebook (the lesson's source, never the submission): its ordinary
code cells (imports, helper tensors, reference models) run here as they are; its
solution cells are not run: every name they define (``def``, ``class``, assignment)
is bound to a :class:`Remote` proxy instead, and their ``import`` lines run here.
``run_test(grade_id)`` runs that test cell's trusted source in the namespace and
returns the cell's outputs (what the grader printed, or the error it chose to show).

A proxy is used as the student's object: calling it, reading an attribute or an
item sends one request to the kernel through ``send`` (see ``wire.py``: data only)
and decodes the answer: tensors, numbers, strings, containers, or handles (new
proxies) of the objects that stay in the kernel (modules, instances, methods).
Design choices for what test cells need beyond plain calls:

* **gradients** (``check_causal``, ``.backward()``): a call whose tensor arguments
  require grad (with grad mode on) is a ``torch.autograd.Function`` here; the kernel
  keeps the call's graph, and the backward pass sends the output gradients to the
  kernel and gets the input gradients back (``torch.autograd.grad`` there).
  Gradients of parameters that live in the kernel do not flow back here;
* **forbid(...)**: the hidden tests' configuration stays here.  ``lib``'s references named
  by the lesson's hidden tests are not in the kernel at all while it is graded
  (``withhold.py``, less those the model solutions use); a call made inside a
  ``with forbid(...)`` block is refused here when the exercise's answer (its solution cells
  in the submission) names one of the banned objects through the submission's imports
  (``torch.nn.functional.softmax`` as ``F.softmax``), as a method when it is one of
  ``torch.Tensor``'s, or as a ``getattr`` string (``_names``);
* **check_not_reference** and ``in``/``==``: a proxy's ``__wrapped__`` is this
  process's own copy of the reference when the student's name *is* lib's object;
* a test that passes a function of its own to the student's code can pass lib's,
  torch's or math's functions (sent as their names); other callables are refused.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import itertools
import sys
import traceback
from collections.abc import Callable

from tools.autograder import wire, withhold
from tools.common import grade_id, is_test, nbgrader_md

_active_forbid: list[tuple[str, ...]] = []


def track_forbid() -> None:
    """Wrap ``lib.checks.forbid`` (this process's copy) so proxy calls know the active bans."""
    import lib.checks as checks

    if getattr(checks.forbid, "_course_tracking", False):
        return
    original = checks.forbid

    @contextlib.contextmanager
    def forbid(*targets: str):
        with original(*targets):
            _active_forbid.append(tuple(str(t) for t in targets))
            try:
                yield
            finally:
                _active_forbid.pop()

    forbid._course_tracking = True  # type: ignore[attr-defined]
    forbid.__doc__ = original.__doc__
    checks.forbid = forbid


def _names(code: str, target: str, alias: dict[str, str]) -> bool:
    """Whether ``code`` names the torch function ``target``: through the imports (``alias``), as a method
    when the target is one of ``torch.Tensor``'s, or as a ``getattr`` string (a static look, in the grader)."""
    owner, _, last = target.rpartition(".")
    tree = withhold._tree(code)
    if tree is None:
        return False
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and n.value == last:
            return True
        if owner == "torch.Tensor" and isinstance(n, ast.Attribute) and n.attr == last:
            return True
    return target in withhold.used_by(code, alias)


class RemoteError(Exception):
    """The student's code raised an exception of a type that is not a Python built-in."""


class KernelGone(Exception):
    """The kernel died or stopped answering while a test ran."""


def _exception(ename: str, evalue: str) -> BaseException:
    cls = getattr(builtins, ename, None) if isinstance(ename, str) else None
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
        try:
            return cls(evalue)
        except Exception:  # noqa: BLE001
            pass
    return RemoteError(f"{str(ename)[:100]}: {evalue}")


class Remote:
    """A proxy of an object in the student's kernel: a global name, or a handle.

    What a proxy *is* (its class, its bases) comes from the grader's own records, never from the
    kernel: a name bound to a solution cell's ``class X(Bases)`` has the bases the lesson's trusted
    source declares, an object made by calling it is an instance of that declaration, and anything
    else is an opaque :class:`Remote` (``isinstance`` against torch's or lib's classes is False; the
    layers a test may check by type come back as data, built here).
    """

    __slots__ = ("_s", "_target", "_label", "_ref", "_declared", "__weakref__")

    def __init__(self, session: GraderSession, target: dict, label: str, ref: str | None = None,
                 declared: type | None = None) -> None:
        object.__setattr__(self, "_s", session)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_label", label)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_declared", declared)

    @property
    def __bases__(self):  # issubclass(the student's class, X): the bases its trusted declaration names
        declared = self._declared if "name" in self._target else None
        return declared.__bases__ if declared is not None else ()

    @property
    def __class__(self):  # isinstance(the student's object, X): an instance of a declared class, else opaque
        declared = self._s.instances.get(self._target.get("h")) if "h" in self._target else None
        return declared if declared is not None else Remote

    def __call__(self, *args, **kwargs):
        value = self._s.call(self._target, None, args, kwargs)
        if self._declared is not None and "name" in self._target and type(value) is Remote \
                and "h" in value._target:  # an object made by the declared class: the grader records it
            self._s.instances[value._target["h"]] = self._declared
        return value

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return self._s.request({"op": "get", **self._target, "attr": attr})

    def __setattr__(self, attr: str, value) -> None:
        self._s.call(self._target, "__setattr__", (attr, value), {})

    def __getitem__(self, key):
        return self._s.call(self._target, "__getitem__", (key,), {})

    def __len__(self) -> int:
        n = self._s.call(self._target, "__len__", (), {})
        if type(n) is not int:
            raise TypeError("__len__ did not return an int")
        return n

    def __iter__(self):
        items = self._s.call(self._target, "__iter__", (), {})
        if not isinstance(items, list):
            raise TypeError(f"{self._label} is not iterable as data")
        return iter(items)

    def named_modules(self, memo=None, prefix: str = "", remove_duplicate: bool = True):
        """nn.Module's traversal, walked from here (a grader-side layer holding the student's module)."""
        memo = set() if memo is None else memo
        if self in memo:
            return
        if remove_duplicate:
            memo.add(self)
        yield prefix, self
        for name, child in self._s.call(self._target, "named_children", (), {}):
            if isinstance(child, Remote):
                yield from child.named_modules(memo, f"{prefix}.{name}" if prefix else str(name), remove_duplicate)

    @property
    def __wrapped__(self):  # check_not_reference: is the student's object lib's own? (a hint: the kernel says so)
        return _referenced(self._identity())

    def _identity(self) -> str | None:
        if self._ref is None:
            tag = self._s.request({"op": "get", **self._target}, raw=True)
            ref = tag.get("ref") if isinstance(tag, dict) else None
            object.__setattr__(self, "_ref", str(ref) if ref else "")
        return self._ref or None

    def __eq__(self, other) -> bool:
        if other is self:
            return True
        if isinstance(other, Remote):
            return other._target == self._target
        obj = _referenced(self._identity())
        return obj is not None and obj is other

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash(repr(sorted(self._target.items())))

    def __repr__(self) -> str:
        return f"<the student's {self._label}>"

    def __bool__(self) -> bool:
        return True


class GraderSession:
    """One submission's test namespace (see the module docstring)."""

    def __init__(self, trusted_nb, send: Callable[[str], str], *, log: Callable[[str], None] | None = None,
                 answers: dict[str, str] | None = None, student_code: list[str] | None = None) -> None:
        track_forbid()
        self.send = send
        self.answers = answers or {}  # grade_id -> the submission's solution cell (the forbid check reads it)
        self.student_code = student_code or list(self.answers.values())  # for the imports the answers rely on
        self.exercise = ""  # "ex1" while ex1's tests run
        self._banned: dict[tuple[str, str], bool] = {}
        self.log = log or (lambda text: None)
        self.ns: dict = {"__name__": "__main__", "__builtins__": builtins}
        self.cells = []  # (kind, grade_id, source)
        for i, c in enumerate(trusted_nb.cells):
            if c.cell_type != "code":
                continue
            kind = "test" if is_test(c) else "solution" if nbgrader_md(c).get("solution") else "code"
            self.cells.append((kind, grade_id(c) or f"cell {i}", c.source))
        self.done = 0
        self.mirrors: dict[int, list] = {}  # parameter handle -> [this process's copy, its version when synced]
        self.module_params: dict[int, list] = {}  # module handle -> its parameters' copies
        self.instances: dict[int, type] = {}  # handle -> the declared class that made it (the grader's record)
        self._calls = itertools.count(1)

    # -- requests ------------------------------------------------------------
    def request(self, header: dict, blobs: list[bytes] | None = None, *, raw: bool = False, sent: list | None = None):
        if self.mirrors and header.get("op") != "call" and "sync" not in header:
            enc = wire.Encoder(_refuse)
            sync = self._sync(enc)
            if sync:  # parameters changed here (an optimizer step) reach the kernel before it answers
                self.request({"op": "sync", "sync": sync}, enc.blobs)
        answer = self.send(wire.pack(header, blobs or []))
        reply, rblobs = wire.unpack(answer)
        if reply.get("ok") is not True:
            raise _exception(str(reply.get("ename", "Exception")), str(reply.get("evalue", ""))[:2000])
        value = reply.get("value")
        if raw:
            return value
        if sent and reply.get("inplace"):
            self._apply_inplace(reply["inplace"], rblobs, sent)
        return self.decode(value, rblobs, sent)

    def decode(self, value, blobs, sent: list | None = None):
        # the kernel names lib's objects only inside handles (for identity checks); a bare reference
        # (a function this process would then call) is refused; answers in the memory of the request's
        # tensors come back as views of them (aliasing and identity as in the kernel)
        return wire.Decoder(blobs, self._proxy, _no_reference, param=self._mirror, layer=_layer_class,
                            sent=sent)(value)

    def _apply_inplace(self, changes, blobs, sent: list) -> None:
        """The request's tensors that the student's code changed in place: the same change here."""
        import torch

        dec = wire.Decoder(blobs, self._proxy, _no_reference)
        for change in changes if isinstance(changes, list) else []:
            if not (isinstance(change, list) and len(change) == 2 and type(change[0]) is int
                    and 0 <= change[0] < len(sent) and isinstance(change[1], dict) and "X" in change[1]):
                raise wire.WireError("malformed in-place update")
            target, new = sent[change[0]], dec.tensor(change[1])
            if new.shape == target.shape and new.dtype == target.dtype:
                with torch.no_grad():
                    target.copy_(new)

    def _mirror(self, pid: int, t, rg: bool):
        """This process's copy of a parameter of the student's module: one object per parameter, kept in sync."""
        import torch

        entry = self.mirrors.get(pid)
        if entry is not None and entry[0].shape == t.shape and entry[0].dtype == t.dtype:
            with torch.no_grad():
                entry[0].copy_(t)
            entry[0].requires_grad_(rg)
        else:
            entry = self.mirrors[pid] = [torch.nn.Parameter(t, requires_grad=rg), None]
        entry[1] = entry[0]._version
        return entry[0]

    def _sync(self, enc: wire.Encoder):
        """Parameters changed here since the kernel sent them (an optimizer step): their new values."""
        changed = [[pid, p] for pid, (p, version) in self.mirrors.items() if p._version != version]
        for pid, p in changed:
            self.mirrors[pid][1] = p._version
        return enc([[pid, p.detach()] for pid, p in changed]) if changed else None

    def _params_of(self, target: dict) -> list:
        n = target.get("h")
        if n is None:
            return []
        if n not in self.module_params:
            got = self.request({"op": "params", "h": n})
            self.module_params[n] = [p for p in got if getattr(p, "requires_grad", False)] \
                if isinstance(got, list) else []
        return self.module_params[n]

    def _proxy(self, tag: dict) -> Remote:
        n = tag.get("H")
        if type(n) is not int:
            raise wire.WireError("malformed handle")
        return Remote(self, {"h": n}, f"{str(tag.get('type', 'object'))[:60]} object", tag.get("ref") or None)

    def _encoder(self) -> wire.Encoder:
        def other(obj):
            if isinstance(obj, Remote):
                if "h" in obj._target:
                    return {"H": obj._target["h"]}
                tag = self.request({"op": "get", **obj._target}, raw=True)
                if isinstance(tag, dict) and type(tag.get("H")) is int:
                    return {"H": tag["H"]}
                return _refuse(obj)
            ref = wire.ref_name(obj)
            if ref:
                return {"R": ref}
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(obj, torch.nn.Module):
                layer = wire.module_data(obj, enc)
                if layer is not None:
                    return layer
            return _refuse(obj)

        enc = wire.Encoder(other)
        return enc

    def call(self, target: dict, attr: str | None, args: tuple, kwargs: dict):
        torch = sys.modules.get("torch")
        leaves = []
        params = []
        if torch is not None and torch.is_grad_enabled():
            leaves = [t for t in wire._tensors((args, kwargs), torch) if t.requires_grad]
            if attr is None:  # calling a module: gradients reach its parameters (their copies here)
                params = [p for p in self._params_of(target) if p.requires_grad]
        if leaves or params:
            box: dict = {"params": [self._pid(p) for p in params]}
            flat = _RemoteCall().apply(self, target, attr, (args, kwargs), box, *leaves, *params)
            return _rebuild(box["tree"], list(flat[1:]), torch)
        value, _ = self._call(target, attr, args, kwargs, grad=False)
        return value

    def _pid(self, p) -> int:
        return next(pid for pid, (q, _) in self.mirrors.items() if q is p)

    def _call(self, target, attr, args, kwargs, *, grad: bool, params: list | None = None):
        self._check_forbidden()
        enc = self._encoder()
        header = {"op": "call", **target, "attr": attr, "args": enc(tuple(args)), "kwargs": enc(dict(kwargs)),
                  "grad": grad, "params": params or []}
        sync = self._sync(enc) if self.mirrors else None
        if sync:
            header["sync"] = sync
        torch = sys.modules.get("torch")
        # inside RemoteCall.forward autograd is off here, but the kernel must record the graph
        header["grad_mode"] = grad or (bool(torch.is_grad_enabled()) if torch is not None else True)
        cid = next(self._calls)
        header["call"] = cid
        return self.request(header, enc.blobs, sent=enc.tensors), cid

    def _check_forbidden(self) -> None:
        """Inside ``forbid(...)``: refuse the call when the exercise's answer names a banned lib object (through
        the submission's imports) or torch function (withhold.py keeps the lesson's references out of the kernel
        where its model solutions allow it).  Nothing of the ban reaches the kernel."""
        for group in _active_forbid:
            for target in group:
                key = (self.exercise, target)
                if key not in self._banned:
                    code = "\n".join(src for gid, src in self.answers.items() if gid.split("_")[0] == self.exercise)
                    root = target.split(".")[0]
                    alias = withhold.lib_imports(self.student_code, root)
                    if root == "lib":  # what the answer binds through the submission's imports
                        self._banned[key] = target in withhold.used_by(code, alias)
                    else:
                        self._banned[key] = _names(code, target, alias)
                if self._banned[key]:
                    raise AssertionError(f"your code called {target}; this exercise asks you to implement it yourself")

    def backward(self, cid: int, grads: list):
        enc = self._encoder()
        return self.request({"op": "backward", "call": cid, "grads": enc(list(grads))}, enc.blobs)

    # -- cells -------------------------------------------------------------
    def _bind_solution(self, gid: str, source: str) -> None:
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                self._run(ast.get_source_segment(source, node) or "", f"<imports of {gid}>")
            elif isinstance(node, ast.ClassDef):
                self.ns[node.name] = Remote(self, {"name": node.name}, f"class {node.name}",
                                            declared=_declared_class(node.name, self._bases(node, gid)))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.ns[node.name] = Remote(self, {"name": node.name}, f"function {node.name}")
            else:
                for name in _assigned(node):
                    try:
                        self.ns[name] = self.request({"op": "get", "name": name})
                    except KernelGone:
                        raise
                    except Exception as e:  # noqa: BLE001  (not defined in the kernel: the test will say so)
                        self.ns.pop(name, None)
                        self.log(f"{gid}: {name} not available from the kernel: {type(e).__name__}")

    def _bases(self, node: ast.ClassDef, gid: str) -> tuple:
        """The bases a solution cell's class declares, evaluated here (the lesson's trusted source)."""
        try:
            return tuple(eval(compile(ast.Expression(b), f"<bases of {gid}>", "eval"), self.ns)  # noqa: S307
                         for b in node.bases)
        except Exception as e:  # noqa: BLE001
            self.log(f"{gid}: the bases of {node.name} are not defined here: {type(e).__name__}")
            return ()

    def _run(self, source: str, filename: str) -> None:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(compile(source, filename, "exec"), self.ns)  # noqa: S102  (trusted cells of the lesson)
        except KernelGone:
            raise
        except BaseException as e:  # noqa: BLE001
            self.log(f"{filename}: {type(e).__name__}: {str(e)[:300]}")
        finally:
            _close_figures()

    def catch_up(self, upto: int) -> None:
        """Run (or bind) the trusted cells before cell ``upto`` that have not been seen yet."""
        while self.done < upto:
            kind, gid, source = self.cells[self.done]
            self.done += 1
            if kind == "solution":
                self._bind_solution(gid, source)
            elif kind == "code":
                self._run(source, f"<{gid}>")

    def index(self, grade_id: str) -> int | None:
        for i, (kind, gid, _) in enumerate(self.cells):
            if kind == "test" and gid == grade_id:
                return i
        return None

    def run_test(self, grade_id: str, max_output: int = 20_000) -> list[dict]:
        """Outputs of the test cell ``grade_id`` run here: a stdout stream, and an error if it failed."""
        i = self.index(grade_id)
        if i is None:
            return [_error_output("GraderError", f"no test cell {grade_id!r} in the lesson's source", [])]
        self.catch_up(i)
        self.done = max(self.done, i + 1)
        self.exercise = grade_id.split("_")[0]
        source = self.cells[i][2]
        filename = f"<test {grade_id}>"
        out = io.StringIO()
        error = None
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(compile(source, filename, "exec"), self.ns)  # noqa: S102
        except KernelGone:
            raise
        except BaseException as e:  # noqa: BLE001  (AssertionError from a check, the student's errors ...)
            lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
            error = _error_output(type(e).__name__, _message(e), lines)
        finally:
            _close_figures()
        outputs = []
        text = out.getvalue()
        if text:
            if len(text) > max_output:
                text = text[:max_output] + "\n... output truncated by the grader\n"
            outputs.append({"output_type": "stream", "name": "stdout", "text": text})
        if error:
            outputs.append(error)
        return outputs


def _message(e: BaseException) -> str:
    try:
        return str(e)[:2000]
    except Exception:  # noqa: BLE001
        return ""


def _error_output(ename: str, evalue: str, lines: list[int]) -> dict:
    where = f" (test cell, line {lines[-1]})" if lines else ""
    return {"output_type": "error", "ename": ename, "evalue": evalue,
            "traceback": [f"Graded in the grader process{where}", f"\x1b[0;31m{ename}\x1b[0m: {evalue}"]}


def _referenced(ref: str | None):
    """This process's object that the kernel names (only in lib, torch or math, already imported here), or None."""
    if not ref:
        return None
    try:
        return wire.resolve_ref(ref, may_import=False)
    except Exception:  # noqa: BLE001
        return None


def _layer_class(name: str):
    """The class of a layer the kernel sends as data (wire.layer_kwargs), already imported here."""
    cls = wire.resolve_ref(name, may_import=False)
    if not isinstance(cls, type) or wire.layer_kwargs(cls) is None:
        raise wire.WireError("not a layer the grader accepts")
    return cls


def _declared_class(name: str, bases: tuple) -> type | None:
    """A stand-in for a solution cell's class: the trusted source's bases, nothing of the student's."""
    import types

    torch = sys.modules.get("torch")
    bases = tuple(b._declared if type(b) is Remote and b._declared is not None else b for b in bases)  # X(MyBase)
    bases = tuple(b for b in bases if isinstance(b, type)
                  and not (torch is not None and issubclass(b, torch.Tensor)))  # never a tensor: torch reads memory
    try:
        return types.new_class(name, bases or (object,), {}, lambda ns: ns.update(__module__="__main__"))
    except Exception:  # noqa: BLE001
        return None


def _no_reference(name: str):
    raise wire.WireError("the kernel sent a reference; it may only send data and handles")


def _refuse(obj) -> None:
    raise TypeError(f"the grader cannot send {type(obj).__name__} objects to the student's kernel (data only)")


def _assigned(node: ast.stmt) -> list[str]:
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = []
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                names.append(n.id)
    return names


def _close_figures() -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            plt.close("all")
        except Exception:  # noqa: BLE001
            pass


def _rebuild(tree, tensors: list, torch):
    """Put ``tensors`` (autograd's outputs) in place of the tensors of ``tree``, in encoder order."""
    it = iter(tensors)

    def walk(v, depth=0):
        if isinstance(v, torch.Tensor):
            return next(it)
        if isinstance(v, list):
            return [walk(x, depth + 1) for x in v]
        if isinstance(v, tuple):
            return tuple(walk(x, depth + 1) for x in v)
        if isinstance(v, dict):
            return {walk(k, depth + 1): walk(x, depth + 1) for k, x in v.items()}
        return v

    return walk(tree)


def _remote_call_class():
    import torch

    class RemoteCall(torch.autograd.Function):
        """A call of the student's code inside autograd: backward asks the kernel for the input gradients."""

        @staticmethod
        def forward(ctx, session, target, attr, argkw, box, *leaves):
            value, cid = session._call(target, attr, argkw[0], argkw[1], grad=True, params=box["params"])
            outs = wire._tensors(value, torch)
            box["tree"] = value
            ctx.session, ctx.cid, ctx.n_leaves = session, cid, len(leaves)
            ctx.leaf_meta = [(t.dtype, t.shape) for t in leaves]
            dummy = torch.zeros(())
            outs = [o.detach() if not isinstance(o, torch.nn.Parameter) else o.detach() for o in outs]
            ctx.mark_non_differentiable(dummy, *[o for o in outs if not (o.is_floating_point() or o.is_complex())])
            return (dummy, *outs)

        @staticmethod
        def backward(ctx, _dummy, *grads):
            got = ctx.session.backward(ctx.cid, list(grads))
            if not isinstance(got, list) or len(got) != ctx.n_leaves:
                raise RuntimeError("the kernel sent no gradients for the student's code")
            out = []
            for g, (dtype, shape) in zip(got, ctx.leaf_meta, strict=True):
                if g is None:
                    out.append(None)
                elif not isinstance(g, torch.Tensor) or tuple(g.shape) != tuple(shape):
                    raise RuntimeError("the kernel sent gradients of the wrong shape")
                else:
                    out.append(g.to(dtype))
            return (None, None, None, None, None, *out)

    return RemoteCall


_REMOTE_CALL = None


def _RemoteCall():  # noqa: N802
    global _REMOTE_CALL
    if _REMOTE_CALL is None:
        _REMOTE_CALL = _remote_call_class()
    return _REMOTE_CALL


def agent_source() -> str:
    """The code that installs the agent in the kernel: wire.py's source, then ``install``."""
    from pathlib import Path

    src = Path(wire.__file__).read_text()
    return (f"def __course_install_agent():\n"
            f"    _ns = {{'__name__': '_course_rpc_src'}}\n"
            f"    exec(compile({src!r}, '<course grader agent>', 'exec'), _ns)\n"
            f"    _ns['install'](get_ipython().user_ns)\n"
            f"__course_install_agent(); del __course_install_agent\n")
